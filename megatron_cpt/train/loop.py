"""The training loop: build everything in a fixed order, then step, log, evaluate and checkpoint.

Run by every rank of a job (``megatron-cpt train`` starts the ranks); see ``megatron_cpt.train.cli``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from megatron_cpt.config.recipe import Recipe


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss (``train.nonfinite_loss=stop`` or too many skips)."""


@dataclass
class TrainOutcome:
    last_step: int
    last_loss: float
    checkpoint: str | None


def checkpoint_dir(recipe: Recipe) -> Path:
    return Path(recipe.checkpoint.dir or Path(recipe.logging.run_dir) / "checkpoints")


def _is_logging_rank() -> bool:
    # Every rank knows the reduced loss; the last rank (last PP stage) also knows the grad norm.
    return dist.get_rank() == dist.get_world_size() - 1


def _truncate_metrics_after(run_dir: Path, step: int) -> None:
    """Drop records of steps that a resumed run will redo (they ran past the last checkpoint)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def run_training(recipe: Recipe) -> TrainOutcome:
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads

    from megatron_cpt.checkpointing.dist_io import load_model_weights, read_meta
    from megatron_cpt.data.datasets import (build_training_data, global_batch_digest,
                                            microbatches)
    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import (build_optimizer, initialize_parallel,
                                               wrap_with_ddp)
    from megatron_cpt.train.checkpoint import (TrainingProgress, check_model_matches,
                                               find_resume_checkpoint, load_training_checkpoint,
                                               save_training_checkpoint)
    from megatron_cpt.train.metrics import MetricsWriter
    from megatron_cpt.train.schedule import build_scheduler, current_lr
    from megatron_cpt.train.evaluation import evaluate_validation_sets, validation_samples
    from megatron_cpt.train.step import train_step

    cfg = recipe
    # 1. Process groups and seeds.
    initialize_parallel(cfg.parallel, cfg.train.seed)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    num_micro = cfg.train.num_microbatches(dp_size)

    # 2. Model chunks, DDP, optimizer, LR schedule.
    chunks = build_model(cfg.model, cfg.parallel)
    model = wrap_with_ddp(chunks, cfg.parallel)
    optimizer = build_optimizer(model, cfg.optim, cfg.parallel, cfg.model.dtype)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    transformer_config = chunks[0].config
    transformer_config.finalize_model_grads_func = finalize_model_grads
    transformer_config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync

    # 3. State: resume (our own checkpoint) wins over initial weights (a converted checkpoint).
    run_dir = Path(cfg.logging.run_dir)
    ckpt_dir = checkpoint_dir(cfg)
    progress = TrainingProgress()
    resume_from = find_resume_checkpoint(ckpt_dir) if cfg.checkpoint.resume else None
    if resume_from is not None:
        progress = load_training_checkpoint(resume_from, model, optimizer, scheduler, cfg.model,
                                            cfg.parallel)
        _log(f"resumed from {resume_from} at step {progress.step}")
    elif cfg.checkpoint.pretrained:
        check_model_matches(read_meta(cfg.checkpoint.pretrained), cfg.model,
                            f"checkpoint.pretrained '{cfg.checkpoint.pretrained}'")
        load_model_weights(model, cfg.checkpoint.pretrained)
        # The optimizer's fp32 main weights were copied from the random init: refresh them.
        optimizer.reload_model_params()
        _log(f"initial weights from {cfg.checkpoint.pretrained}")

    # 4. Data: the mixture, enough samples for every step of the run, validation sets.
    data = build_training_data(cfg.data, cfg.train, cfg.model.vocab_size,
                               cfg.train.steps * cfg.train.global_batch_size,
                               validation_samples(cfg), cache_dir=str(run_dir / "data_cache"))
    train_ds = data.train
    if _is_logging_rank():
        _log(data.plan.format_table())
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "mixture.json").write_text(json.dumps(data.plan.to_dict(), indent=2))

    metrics = MetricsWriter(run_dir, cfg.logging.tensorboard, enabled=_is_logging_rank())
    if _is_logging_rank():
        _truncate_metrics_after(run_dir, progress.step)
    gbs = cfg.train.global_batch_size
    seq = cfg.train.seq_length
    last_loss = float("nan")
    last_saved = resume_from
    saved_step = progress.step if resume_from is not None else None
    consecutive_skips = 0
    try:
        final_step = cfg.train.stop_at_step or cfg.train.steps
        while progress.step < final_step:
            start = time.perf_counter()
            # Which samples this step trains on, comparable across layouts and resumes.
            digest = (global_batch_digest(train_ds, progress.consumed_samples, gbs)
                      if cfg.data.batch_digest and _is_logging_rank() else None)
            batches = microbatches(train_ds, progress.consumed_samples, cfg.train, dp_rank, dp_size)
            result = train_step(model, optimizer, scheduler, batches, num_micro, seq,
                                cfg.train.micro_batch_size,
                                skip_nonfinite=cfg.train.nonfinite_loss == "skip")
            elapsed = time.perf_counter() - start
            progress.step += 1
            progress.consumed_samples += gbs
            if not math.isfinite(result.loss):
                consecutive_skips += 1
                progress.skipped_steps += 1
                metrics.write(progress.step, {"loss": result.loss, "lr": current_lr(optimizer),
                                              "skipped": True, "tokens": result.tokens,
                                              "step_time_s": elapsed})
                if cfg.train.nonfinite_loss == "stop" or consecutive_skips > cfg.train.max_skipped_steps:
                    raise NonFiniteLossError(
                        f"step {progress.step}: non-finite loss (train.nonfinite_loss="
                        f"{cfg.train.nonfinite_loss}, {consecutive_skips} consecutive)")
                continue
            consecutive_skips = 0
            last_loss = result.loss
            values = {"loss": result.loss, "lr": current_lr(optimizer),
                      "grad_norm": result.grad_norm, "tokens": result.tokens,
                      "consumed_samples": progress.consumed_samples, "step_time_s": elapsed,
                      "tokens_per_s": result.tokens / elapsed if elapsed > 0 else None,
                      "batch_digest": digest}
            if cfg.train.eval_interval and progress.step % cfg.train.eval_interval == 0:
                values.update(evaluate_validation_sets(model, data, cfg, dp_rank, dp_size,
                                                       num_micro))
            metrics.write(progress.step, values)
            if progress.step % cfg.logging.log_interval == 0:
                _log(f"step {progress.step}/{cfg.train.steps} loss {result.loss:.4f} "
                     f"lr {values['lr']:.3e} grad_norm {result.grad_norm or 0:.3f} "
                     f"{elapsed:.2f}s")
            interval = cfg.checkpoint.save_interval
            if interval and progress.step % interval == 0:
                last_saved = save_training_checkpoint(ckpt_dir, model, optimizer, scheduler,
                                                      progress, cfg.model, cfg.parallel,
                                                      cfg.checkpoint.keep_last)
                saved_step = progress.step
        if cfg.checkpoint.save_at_end and saved_step != progress.step:
            last_saved = save_training_checkpoint(ckpt_dir, model, optimizer, scheduler, progress,
                                                  cfg.model, cfg.parallel, cfg.checkpoint.keep_last)
    finally:
        metrics.close()
    return TrainOutcome(progress.step, last_loss, str(last_saved) if last_saved else None)


def _log(message: str) -> None:
    if _is_logging_rank():
        print(f"[megatron-cpt] {message}", flush=True)
