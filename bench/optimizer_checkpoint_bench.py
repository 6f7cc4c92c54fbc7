"""Host memory per rank of a training-checkpoint save and load with the distributed optimizer.

    python bench/optimizer_checkpoint_bench.py [--dp 2] [--layers 8] [--hidden 1024] [--work-dir DIR]

Starts ``--dp`` gloo ranks (torchrun) that build a bf16 Llama-shaped model (fp32 main weights and
Adam moments in the distributed optimizer, sharded over DP), take one optimizer step, then save a
training checkpoint and load it back, once with megatron-core's default ``fully_reshardable``
exchange (every rank all-gathers the whole DP group's optimizer state) and once with its
memory-efficient variant (gathered over gloo on DP rank 0 only), the one training uses. For each
rank it prints the resident set size before, and the peak during, each save and load (Linux
``VmHWM``, reset through ``/proc/self/clear_refs`` before each operation), next to the size of
the optimizer state that rank holds and of the whole DP group's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_during(action) -> tuple[float, float]:
    """(RSS before, peak RSS while ``action`` ran), MiB."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS") / 1024
    action()
    return before, _status_kib("VmHWM") / 1024


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from megatron_cpt.checkpointing.dist_io import model_sharded_state_dict, save_dist_checkpoint
    from megatron_cpt.config.model import ModelConfig
    from megatron_cpt.config.optim import OptimConfig
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.mcore_compat import materialize_adam_state
    from megatron_cpt.runtime.parallel import build_optimizer, initialize_parallel, wrap_with_ddp
    from megatron_cpt.train import checkpoint

    parallel = ParallelConfig(distributed_optimizer=True)
    initialize_parallel(parallel, seed=0)
    model_cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden,
                            ffn_hidden_size=args.hidden * 3, num_attention_heads=args.hidden // 64,
                            num_query_groups=max(1, args.hidden // 512), vocab_size=32000,
                            dtype="bf16", attention_backend="sdpa")
    model = wrap_with_ddp(build_model(model_cfg, parallel), parallel)
    optimizer = build_optimizer(model, OptimConfig(), parallel, model_cfg.dtype)
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
    for name, metadata in (("default", {"distrib_optim_sharding_type": "fully_reshardable"}),
                           ("memory_efficient", checkpoint.OPTIMIZER_CHECKPOINT_FORMAT)):
        directory = work / name

        def save():
            state = model_sharded_state_dict(model)
            state["optimizer"] = optimizer.sharded_state_dict(dict(state), is_loading=False,
                                                              metadata=metadata)
            save_dist_checkpoint(state, directory, {"kind": "bench"})

        def load():
            materialize_adam_state(optimizer)
            request = model_sharded_state_dict(model)
            request["optimizer"] = optimizer.sharded_state_dict(dict(request), is_loading=True,
                                                                metadata=metadata)
            loaded = dist_checkpointing.load(request, str(directory))
            optimizer.load_state_dict(loaded["optimizer"])

        figures[f"{name}_save"] = _peak_during(save)
        dist.barrier()
        figures[f"{name}_load"] = _peak_during(load)
        dist.barrier()
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
    print("| format | operation | rank | RSS before (MiB) | peak (MiB) | peak - before (MiB) |")
    print("|---|---|---|---|---|---|")
    for name in ("default", "memory_efficient"):
        for op in ("save", "load"):
            for rank in ranks:
                before, peak = rank[f"{name}_{op}"]
                print(f"| {name} | {op} | {rank['rank']} | {before:.0f} | {peak:.0f} | "
                      f"{peak - before:.0f} |")


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
