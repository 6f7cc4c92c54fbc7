"""One rank of ``megatron-cpt eval``: ``python -m megatron_cpt.eval.worker ARGS`` (the verb's own
arguments; ``megatron-cpt eval`` starts TP x PP x DP of these through torchrun).

Each checkpoint in turn: the model built at the requested layout without initialisation, its
weights loaded from the checkpoint (megatron-core reshards them), every task scored. Rank 0 then
writes the JSON (to a temporary name, renamed when complete) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch.distributed as dist

from megatron_cpt.eval.cli import add_arguments, prepare
from megatron_cpt.files import write_atomic


def evaluate_this_rank(args) -> int:
    """A rank of a distributed job (torchrun set RANK and WORLD_SIZE)."""
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    models, parallel, benchmarks = prepare(args)
    initialize_parallel(parallel, seed=0)
    evaluate(args, models, parallel, benchmarks)
    dist.barrier()
    destroy_parallel()
    return 0


def evaluate_in_this_process(args, models, parallel, benchmarks) -> int:
    """One rank (TP = PP = DP = 1): this process, without starting torchrun."""
    from megatron_cpt.conversion.mcore_io import single_rank_session

    with single_rank_session():
        evaluate(args, models, parallel, benchmarks)
    return 0


def evaluate(args, models, parallel, benchmarks) -> None:
    """Collective: score every checkpoint; rank 0 writes the JSON and prints the table."""
    from tqdm import tqdm

    from megatron_cpt.checkpointing.dist_io import load_model_weights, read_meta
    from megatron_cpt.eval.benchmark import score_benchmarks
    from megatron_cpt.eval.results import format_table
    from megatron_cpt.model.build import build_model

    reporting = dist.get_rank() == 0
    by_checkpoint, records = {}, []
    for ckpt, model in zip(args.ckpt_dir, models):
        chunks = build_model(model, parallel, initialize=False)
        load_model_weights(chunks, ckpt)
        with tqdm(total=len(benchmarks.plan.sequences), unit="seq", desc=f"eval {Path(ckpt).name}",
                  disable=args.no_progress or not reporting) as bar:
            results = score_benchmarks(chunks, benchmarks, args.micro_batch_size, bar.update)
        del chunks
        by_checkpoint[_label(Path(ckpt))] = results
        records.append({"checkpoint": str(ckpt), "step": read_meta(ckpt).get("step"),
                        "dtype": model.dtype, "results": [r.to_dict() for r in results]})
    if reporting:
        report = {
            "tokenizer": args.tokenizer, "prepend_bos": args.prepend_bos,
            "layout": {"tp": parallel.tp, "pp": parallel.pp, "vpp": parallel.vpp,
                       "dp": dist.get_world_size() // (parallel.tp * parallel.pp)},
            "tasks": [{"name": t.name, "format": t.config.format, "path": t.config.path,
                       "split": t.config.split_name, "shots": t.config.shots,
                       "scoring": t.config.scoring, "items": len(t.items)}
                      for t in benchmarks.tasks],
            "checkpoints": records}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(format_table(by_checkpoint), flush=True)
        print(f"wrote {out}", flush=True)


def _label(ckpt: Path) -> str:
    """RUN/step_N for RUN/checkpoints/step_N (the table's column), else the path."""
    return f"{ckpt.parent.parent.name}/{ckpt.name}" if ckpt.parent.name == "checkpoints" else str(ckpt)


def main(argv: list[str] | None = None) -> int:
    from megatron_cpt.conversion.host import run_on_host
    from megatron_cpt.launch.environment import adopt_slurm_rank_environment
    from megatron_cpt.launch.local import run_rank

    parser = argparse.ArgumentParser(prog="python -m megatron_cpt.eval.worker", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.cpu:
        run_on_host()
    adopt_slurm_rank_environment()
    return run_rank(lambda: evaluate_this_rank(args), "eval")


if __name__ == "__main__":
    sys.exit(main())
