"""``megatron-cpt profile``: what a run achieved, and whether a layout fits before launching it.

    megatron-cpt profile report runs/llama3_tiny_cpt_2xcpu
    megatron-cpt profile estimate examples/llama3_8b_cpt_8xh100_fp8.yaml parallel.tp=1

``report`` writes RUN_DIR/profile/report.md with throughput, MFU, step-time breakdown and memory
plots from metrics.jsonl. ``estimate`` prints memory per GPU and communication per step of a
recipe's layout; it exits with status 1 when the most-loaded stage does not fit.
"""

from __future__ import annotations

import argparse


def register(verbs) -> None:
    parser = verbs.add_parser("profile", help="throughput report of a run; memory estimate of a recipe",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="profile_verb", required=True, metavar="PROFILE_VERB")

    report = sub.add_parser("report", help="Markdown + PNG report from RUN_DIR/metrics.jsonl")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", metavar="DIR", help="where to write (default RUN_DIR/profile)")
    report.add_argument("--warmup", type=int, default=2, metavar="N",
                        help="leave the first N steps out of the medians (default 2)")
    report.set_defaults(func=_run_report)

    estimate = sub.add_parser("estimate", help="memory per GPU of a recipe's layout; exit 1 if it "
                                               "does not fit")
    estimate.add_argument("recipe", help="YAML recipe, e.g. examples/llama3_8b_cpt_8xh100_fp8.yaml")
    estimate.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                          help="dotted overrides, e.g. parallel.tp=4 model.recompute=full")
    estimate.add_argument("--gpu-memory-gb", type=float, default=80.0, metavar="GB",
                          help="memory of one GPU in GB (default 80, an H100)")
    estimate.set_defaults(func=_run_estimate)


def _run_report(args) -> int:
    from megatron_cpt.profile.report import write_report

    out_dir = write_report(args.run_dir, args.out, warmup=args.warmup)
    print(f"wrote {out_dir / 'report.md'} and its plots")
    return 0


def _run_estimate(args) -> int:
    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.errors import UserError
    from megatron_cpt.profile.memory import estimate_memory, format_estimate

    if not args.gpu_memory_gb > 0:
        raise UserError(f"--gpu-memory-gb: must be positive, got {args.gpu_memory_gb}")
    estimate = estimate_memory(load_recipe(args.recipe, args.overrides), args.gpu_memory_gb)
    print(format_estimate(estimate))
    return 0 if estimate.fits else 1
