"""Everything a training run holds, built in a fixed order by ``build_state``.

1. process groups and seeds; 2. model chunks, DDP, optimizer, LR schedule; 3. state: resume (our
own checkpoint) wins over initial weights (a converted checkpoint); 4. data: the mixture, enough
samples for every step of the run, validation sets, benchmark tasks; 5. the metrics writer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron_cpt.config.recipe import Recipe
from megatron_cpt.checkpointing.run_checkpoints import checkpoint_dir
from megatron_cpt.files import write_atomic
from megatron_cpt.train.checkpoint import TrainingProgress
from megatron_cpt.run_files import blocking_save_times
from megatron_cpt.train.metrics import MetricsWriter
from megatron_cpt.train.timers import StepTimers


def is_logging_rank() -> bool:
    # Every rank knows the reduced loss; the last rank (last PP stage) also knows the grad norm.
    return dist.get_rank() == dist.get_world_size() - 1


def log(message: str) -> None:
    if is_logging_rank():
        print(f"[megatron-cpt] {message}", flush=True)


@dataclass
class TrainState:
    recipe: Recipe
    model: list  # DDP-wrapped chunks, one per virtual pipeline stage
    optimizer: object
    scheduler: object
    data: object  # megatron_cpt.data.datasets.TrainingData
    metrics: MetricsWriter
    progress: TrainingProgress
    ckpt_dir: Path
    dp_rank: int
    dp_size: int
    num_microbatches: int
    timers: StepTimers  # where each step's time goes (megatron_cpt.train.timers)
    throughput: object  # megatron_cpt.profile.throughput.ThroughputMeter
    # The newest checkpoint of the run (the one it resumed from, until it saves) and its step.
    last_saved: Optional[Path] = None
    saved_step: Optional[int] = None
    last_loss: float = float("nan")
    consecutive_skips: int = 0
    longest_save_s: float = 0.0
    stop_message: str = ""  # why the run stopped early, for the last line it prints
    # checkpoint.async_save: megatron-core's queue of background checkpoint writes.
    checkpoint_writes: object = None
    # eval.interval: benchmark accuracy (megatron_cpt.eval.in_training.TrainingBenchmarks).
    benchmarks: object = None
    cpu_threads: int = 0  # this rank's intra-op threads (runtime.parallel.set_cpu_threads)

    @property
    def final_step(self) -> int:
        return self.recipe.train.stop_at_step or self.recipe.train.steps


def _truncate_metrics_after(run_dir: Path, step: int) -> float:
    """Drop records of steps that a resumed run will redo (they ran past the last checkpoint);
    returns the longest blocking save of the kept ones (0 when there is none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0.0
    kept = [(line, record) for line in path.read_text().splitlines()
            if line.strip() and (record := json.loads(line)).get("step", 0) <= step]
    write_atomic(path, "".join(line + "\n" for line, _ in kept))  # a kill mid-write keeps the history
    return max(blocking_save_times([record for _, record in kept]), default=0.0)


def build_state(cfg: Recipe) -> TrainState:
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

    from megatron_cpt.checkpointing.dist_io import load_model_weights, read_meta
    from megatron_cpt.data.chat_dataset import with_planned_steps
    from megatron_cpt.data.datasets import build_training_data
    from megatron_cpt.eval.in_training import TrainingBenchmarks
    from megatron_cpt.model.build import build_model, describe_layout
    from megatron_cpt.profile.throughput import ThroughputMeter
    from megatron_cpt.runtime.parallel import (build_optimizer, initialize_parallel,
                                               set_cpu_threads, wrap_with_ddp)
    from megatron_cpt.checkpointing.run_checkpoints import (find_resume_checkpoint,
                                                            remove_partial_writes)
    from megatron_cpt.checkpointing.start_checks import check_model_matches
    from megatron_cpt.train.checkpoint import data_parallel_group, load_training_checkpoint
    from megatron_cpt.train.evaluation import validation_samples
    from megatron_cpt.train.schedule import build_scheduler

    cfg = with_planned_steps(cfg)  # data.chat.epochs -> train.steps, from the packed data
    # 1. Thread count, process groups and seeds.
    cpu_threads = set_cpu_threads(cfg.launch)
    initialize_parallel(cfg.parallel, cfg.train.seed, timeout_minutes=cfg.launch.dist_timeout_minutes)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()

    # 2. Model chunks, DDP, optimizer, LR schedule.
    chunks = build_model(cfg.model, cfg.parallel, loss_mask_varies=cfg.data.loss_mask_varies,
                         micro_batch_size=cfg.train.micro_batch_size)
    model = wrap_with_ddp(chunks, cfg.parallel)
    optimizer = build_optimizer(model, cfg.optim, cfg.parallel, cfg.model.dtype)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)

    # 3. Resume (our own checkpoint) wins over initial weights (a converted checkpoint).
    ckpt_dir = checkpoint_dir(cfg)
    if dist.get_rank() == 0 and ckpt_dir.is_dir():
        for name in remove_partial_writes(ckpt_dir):
            print(f"[megatron-cpt] removed {ckpt_dir / name}: a checkpoint write an earlier start "
                  f"did not finish (never read)", flush=True)
    dist.barrier()
    progress = TrainingProgress()
    resume_from = find_resume_checkpoint(ckpt_dir) if cfg.checkpoint.resume else None
    if resume_from is not None:
        progress = load_training_checkpoint(resume_from, model, optimizer, scheduler, cfg.model,
                                            cfg.parallel)
        log(f"resumed from {resume_from} at step {progress.step}")
    elif cfg.checkpoint.pretrained:
        check_model_matches(read_meta(cfg.checkpoint.pretrained), cfg.model,
                            f"checkpoint.pretrained '{cfg.checkpoint.pretrained}'")
        load_model_weights(model, cfg.checkpoint.pretrained, parallel_group=data_parallel_group())
        # The optimizer's fp32 main weights were copied from the random init: refresh them.
        optimizer.reload_model_params()
        log(f"initial weights from {cfg.checkpoint.pretrained}")

    # 4. Data.
    run_dir = Path(cfg.logging.run_dir)
    data = build_training_data(cfg.data, cfg.train, cfg.model.vocab_size,
                               cfg.train.steps * cfg.train.global_batch_size,
                               validation_samples(cfg), cache_dir=str(run_dir / "data_cache"))
    longest_save_s = 0.0
    if is_logging_rank():
        log(data.plan.format_table())
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / data.plan.file_name).write_text(json.dumps(data.plan.to_dict(), indent=2))
        # What really runs (read from the built model), for the record and for tests.
        # The CPU kernels' instruction set and thread count: the rest of a CPU run's arithmetic.
        layout = {**describe_layout(chunks), "cpu_threads": cpu_threads,
                  "cpu_capability": torch.backends.cpu.get_cpu_capability()}
        (run_dir / "layout.json").write_text(json.dumps(layout, indent=2))
        log("layout: " + " ".join(f"{k}={v}" for k, v in layout.items()))
        # The time-limit stop reserves the longest save seen so far, across starts.
        longest_save_s = _truncate_metrics_after(run_dir, progress.step)

    benchmarks = TrainingBenchmarks.from_recipe(cfg)
    if benchmarks is not None:
        log(benchmarks.describe_cost(cfg))

    # 5. Metrics, written by one rank; step timers and throughput, on every rank.
    metrics = MetricsWriter(run_dir, cfg.logging.tensorboard, enabled=is_logging_rank())
    timers = StepTimers(chunks[0].config, cfg.logging.detail_interval, cfg.logging.trace_steps,
                        run_dir / "trace")
    throughput = ThroughputMeter(cfg, dist.get_world_size())
    log(f"MFU against {throughput.peak.describe()}")
    return TrainState(
        recipe=cfg, model=model, optimizer=optimizer, scheduler=scheduler, data=data,
        metrics=metrics, progress=progress, ckpt_dir=ckpt_dir, dp_rank=dp_rank, dp_size=dp_size,
        num_microbatches=cfg.train.num_microbatches(dp_size), timers=timers,
        throughput=throughput, longest_save_s=longest_save_s,
        last_saved=resume_from, saved_step=progress.step if resume_from is not None else None,
        checkpoint_writes=AsyncCallsQueue() if cfg.checkpoint.async_save else None,
        benchmarks=benchmarks, cpu_threads=cpu_threads)
