"""Host memory and time per rank of a training-checkpoint save and load with the distributed
optimizer, in the checkpoint formats training can use.

    python bench/optimizer_checkpoint_bench.py [--dp 2] [--layers 8] [--hidden 1024] [--work-dir DIR]

Starts ``--dp`` gloo ranks (torchrun) that build a bf16 Llama-shaped model (fp32 main weights and
Adam moments in the distributed optimizer, sharded over DP), take one optimizer step, then save a
training checkpoint and load it back in each of:

- ``one_writer_fully_reshardable``: the optimizer in megatron-core's memory-efficient
  ``fully_reshardable`` format (the DP group's state gathered over gloo on DP rank 0) and
  megatron-core's default save and load (one replica writes each tensor, every rank reads all it
  needs): what every save did before this release;
- ``parallel_dp_reshardable``: ``dp_reshardable`` (each rank writes its own shard) with the fully
  parallel save and load over DP: the default now (``save_training_checkpoint``);
- ``parallel_fully_reshardable``: ``checkpoint.reshardable: true`` now.

For each rank it prints the resident set size before, and the peak during, each save and load
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` before each operation) and the seconds it
took (all ranks done), next to the size of the optimizer state that rank holds and of the whole DP
group's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20
VARIANTS = ("one_writer_fully_reshardable", "parallel_dp_reshardable",
            "parallel_fully_reshardable")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measure(action) -> tuple[float, float, float]:
    """(RSS before, peak RSS while ``action`` ran) in MiB, and its seconds until all ranks are done."""
    import gc

    import torch.distributed as dist

    gc.collect()
    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS") / 1024
    start = time.perf_counter()
    action()
    dist.barrier()
    return before, _status_kib("VmHWM") / 1024, time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from megatron_cpt.checkpointing.dist_io import (apply_model_state, load_dist_checkpoint,
                                                   save_dist_checkpoint)
    from megatron_cpt.config.model import ModelConfig
    from megatron_cpt.config.optim import OptimConfig
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import build_optimizer, initialize_parallel, wrap_with_ddp
    from megatron_cpt.train import checkpoint
    from megatron_cpt.train.schedule import build_scheduler

    parallel = ParallelConfig(distributed_optimizer=True)
    initialize_parallel(parallel, seed=0)
    model_cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden,
                            ffn_hidden_size=args.hidden * 3, num_attention_heads=args.hidden // 64,
                            num_query_groups=max(1, args.hidden // 512), vocab_size=32000,
                            dtype="bf16", attention_backend="sdpa")
    optim = OptimConfig()
    model = wrap_with_ddp(build_model(model_cfg, parallel), parallel)
    optimizer = build_optimizer(model, optim, parallel, model_cfg.dtype)
    scheduler = build_scheduler(optimizer, optim, 10)
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    optimizer.step()  # creates the Adam moments
    params = sum(p.numel() for chunk in model for p in chunk.parameters())
    state_bytes = 12 * params  # fp32 main weights + two Adam moments
    work = Path(args.work_dir)
    figures = {"rank": dist.get_rank(), "params": params,
               "optimizer_state_mib_this_rank": state_bytes / dist.get_world_size() / MIB,
               "optimizer_state_mib_all_ranks": state_bytes / MIB}
    progress = checkpoint.TrainingProgress(step=1)
    for name in VARIANTS:
        directory = work / name
        if name == "one_writer_fully_reshardable":
            def save():
                state = checkpoint.training_state(model, optimizer, checkpoint.FULLY_RESHARDABLE,
                                                  include_rng=False, is_loading=False)
                save_dist_checkpoint(state, directory / "step_000001", {"kind": "bench"})

            def load():
                request = checkpoint.training_state(model, optimizer, checkpoint.FULLY_RESHARDABLE,
                                                    include_rng=False, is_loading=True)
                loaded = load_dist_checkpoint(request, directory / "step_000001")
                apply_model_state(model, loaded)
                with torch.no_grad():
                    optimizer.load_state_dict(loaded["optimizer"])
        else:
            reshardable = name == "parallel_fully_reshardable"

            def save():
                checkpoint.save_training_checkpoint(directory, model, optimizer, scheduler,
                                                    progress, model_cfg, parallel,
                                                    reshardable=reshardable)

            def load():
                checkpoint.load_training_checkpoint(directory / "step_000001", model, optimizer,
                                                    scheduler, model_cfg, parallel)

        figures[f"{name}_save"] = _measure(save)
        figures[f"{name}_load"] = _measure(load)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, figures)
    if dist.get_rank() == 0:
        print(json.dumps(gathered), flush=True)


def report(ranks: list[dict], args: argparse.Namespace) -> None:
    first = ranks[0]
    print(f"model: {args.layers} layers, hidden {args.hidden}, {first['params'] / 1e6:.1f} M "
          f"parameters (bf16), distributed optimizer over DP={len(ranks)}; optimizer state "
          f"{first['optimizer_state_mib_all_ranks']:.0f} MiB in all, "
          f"{first['optimizer_state_mib_this_rank']:.0f} MiB per rank")
    print("| format | operation | rank | RSS before (MiB) | peak (MiB) | peak - before (MiB) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in VARIANTS:
        for op in ("save", "load"):
            for rank in ranks:
                before, peak, seconds = rank[f"{name}_{op}"]
                print(f"| {name} | {op} | {rank['rank']} | {before:.0f} | {peak:.0f} | "
                      f"{peak - before:.0f} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dp", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="optim_ckpt_bench_") as tmp:
        work_dir = args.work_dir or tmp
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={args.dp}", __file__, "--worker", "--layers", str(args.layers),
                   "--hidden", str(args.hidden), "--work-dir", work_dir]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(out.stderr[-4000:])
        report(json.loads(out.stdout.strip().splitlines()[-1]), args)


if __name__ == "__main__":
    main()
