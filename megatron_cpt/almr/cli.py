"""``megatron-cpt almr``: the ALMR x learning-rate study (docs/ALMR.md).

    megatron-cpt almr sweep examples/demo_llama3_tiny_cpt_2xcpu.yaml \\
        checkpoint.pretrained=outputs/demo/base/checkpoints/step_000200 train.eval_interval=100 \\
        --almr 0.1,0.2,0.33,0.5 --lr 1e-3,3e-3,1e-2 --seeds 3 --tokens 102400 --out runs/almr_demo
    megatron-cpt almr sweep examples/llama3_8b_cpt_32xh100_fp8.yaml ... --almr ... --lr ... \\
        --slurm --partition gpu --time 12:00:00 --submit      # one Slurm job array
    megatron-cpt almr status runs/almr_demo
    megatron-cpt almr reference runs/almr_demo/reference/recipe.yaml   # what the sweep runs first
    megatron-cpt almr fit runs/almr_demo --objective constrained --tolerance 0.02 --target-lr 1e-3
    megatron-cpt almr fit runs/almr_demo --accuracy zh_mc --tolerance 0.02   # by benchmark accuracy

A rerun of the same ``sweep`` command skips finished runs and resumes unfinished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from megatron_cpt.errors import UserError


def _numbers(option: str):
    def parse(text: str) -> list[float]:
        try:
            return [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers, e.g. 0.1,0.2,0.33, got {text!r}") from None
    parse.__name__ = option
    return parse


def register(verbs) -> None:
    parser = verbs.add_parser("almr", help="the ALMR x learning-rate study: sweep, status, fit",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    sweep = actions.add_parser("sweep", help="run (or resume) the grid of CPT runs")
    sweep.add_argument("recipe", help="YAML recipe with a data.mixture")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    sweep.add_argument("--almr", type=_numbers("ALMR list"), required=True,
                       help="comma-separated ALMRs in [0, 1] (at least 3 to fit)")
    sweep.add_argument("--lr", type=_numbers("LR list"), required=True,
                       help="comma-separated learning rates (at least 2; 3 for a goodness of fit)")
    sweep.add_argument("--seeds", type=int, default=1, metavar="R",
                       help="runs per grid point, with train.seed = the recipe's + 0 .. R-1 (the "
                            "order of the training samples); the fit's intervals then include "
                            "run-to-run variation (default 1)")
    sweep.add_argument("--tokens", type=int, default=None,
                       help="training tokens of every run, rounded up to whole steps "
                            "(default: train.steps of the recipe)")
    sweep.add_argument("--out", default=None, help="sweep directory (default runs/almr_<recipe>)")
    sweep.add_argument("--plan-only", action="store_true",
                       help="write the manifest and run recipes, run nothing")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="with --local: runs at a time (each with its recipe's ranks and "
                            "launch.cpu_threads; default 1)")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true",
                       help="run the points here, one after another (the default)")
    where.add_argument("--slurm", action="store_true",
                       help="write SWEEP_DIR/sweep.sbatch, one Slurm job array task per run "
                            "(each with the recipe's launch.nodes x launch.procs_per_node)")
    from megatron_cpt.launch.cli import add_job_arguments
    from megatron_cpt.launch.slurm import DEFAULT_LEAD_S

    slurm = sweep.add_argument_group("with --slurm")
    add_job_arguments(slurm, required=False, signal_lead_default=str(DEFAULT_LEAD_S))
    slurm.add_argument("--max-parallel", type=int, metavar="N", help="array tasks at once")
    slurm.add_argument("--submit", action="store_true", help="submit with sbatch")
    sweep.set_defaults(func=run_sweep_command)

    reference = actions.add_parser(
        "reference", help="evaluate the initial weights (checkpoint.pretrained) on the "
                          "validation sets: a sweep's losses before CPT")
    reference.add_argument("recipe", help="YAML recipe, e.g. SWEEP_DIR/reference/recipe.yaml")
    reference.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    reference.set_defaults(func=reference_command)

    status = actions.add_parser("status", help="progress of each run of a sweep")
    status.add_argument("sweep_dir")
    status.set_defaults(func=status_command)

    fit = actions.add_parser("fit", help="best ALMR per LR, the fitted relation, plots")
    fit.add_argument("sweep_dir")
    fit.add_argument("--objective", choices=("constrained", "weighted"), default="constrained")
    fit.add_argument("--tolerance", type=float, default=0.02,
                     help="constrained: allowed rise of each original-language loss over its "
                          "pre-CPT value, as a fraction (default 0.02)")
    fit.add_argument("--weight", type=float, default=0.5,
                     help="weighted: weight of the additional-language loss (default 0.5)")
    fit.add_argument("--accuracy", default=None, metavar="TASK",
                     help="score the additional language by this benchmark task's accuracy "
                          "(eval_acc/TASK of the runs' eval section) instead of its loss")
    fit.add_argument("--original", default=None,
                     help="comma-separated original languages (default: every other language)")
    target = fit.add_mutually_exclusive_group()
    target.add_argument("--target-lr", type=float, default=None,
                        help="recommend the ALMR for a run at this learning rate")
    target.add_argument("--target-recipe", default=None,
                        help="recommend the ALMR for this recipe's optim.lr (e.g. the 70B one)")
    fit.add_argument("--bootstrap", type=int, default=1000, help="replicates (0: none)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    fit.add_argument("--out", default=None, help="output directory (default SWEEP_DIR/fit)")
    fit.set_defaults(func=fit_command)


SLURM_ONLY = ("partition", "time", "account", "container_image", "container_mounts",
              "signal_lead", "max_parallel", "python", "submit")


def _slurm_launcher(args, plan):
    from megatron_cpt.almr.launchers import SlurmLauncher
    from megatron_cpt.config.recipe import recipe_from_dict
    from megatron_cpt.launch.cli import job_from_arguments
    from megatron_cpt.launch.slurm import DEFAULT_LEAD_S

    first = recipe_from_dict(next(r for r in plan.runs if r.kind == "train").recipe)
    lead, reason = (args.signal_lead, "--signal-lead") if args.signal_lead else (
        DEFAULT_LEAD_S, "default")
    job = job_from_arguments(args, first.launch.nodes, first.launch.procs_per_node, lead, reason)
    launcher = SlurmLauncher(job, submit=args.submit, max_parallel=args.max_parallel,
                             workdir=str(Path.cwd()))
    launcher.render(plan, plan.runs)  # its checks too, before the sweep directory is written
    return launcher


def run_sweep_command(args) -> int:
    from megatron_cpt.almr.launchers import LocalLauncher, refuse_while_submitted
    from megatron_cpt.almr.sweep import plan_runs, run_sweep, write_plan
    from megatron_cpt.config.loader import apply_overrides, read_yaml
    from megatron_cpt.config.recipe import recipe_from_dict
    from megatron_cpt.train.startup import check_inputs

    if args.slurm:
        from megatron_cpt.launch.cli import check_job_arguments

        if not args.partition or not args.time:
            raise UserError("--slurm: needs --partition and --time")
        check_job_arguments(args)
    else:
        given = [name for name in SLURM_ONLY if getattr(args, name) not in (None, False)]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')}: only with --slurm")
    if args.slurm and args.parallel != 1:
        raise UserError("--parallel: only with --local (Slurm: --max-parallel)")
    base = apply_overrides(read_yaml(args.recipe), list(args.overrides))
    out = args.out or f"runs/almr_{Path(args.recipe).stem}"
    plan = plan_runs(base, args.almr, args.lr, out, tokens=args.tokens, recipe_source=args.recipe,
                     seeds=args.seeds)
    # Once, before anything is written: the data every run reads and the initial weights every
    # run starts from (the reference's recipe: it never saves a checkpoint to resume from).
    check_inputs(recipe_from_dict(plan.runs[0].recipe))
    launcher = None if args.plan_only else (
        _slurm_launcher(args, plan) if args.slurm else
        LocalLauncher(progress=not args.no_progress, parallel=args.parallel))
    if isinstance(launcher, LocalLauncher):
        launcher.check(plan)
    if launcher is not None and (not args.slurm or args.submit):  # it starts or submits runs
        refuse_while_submitted(out)
    print(f"sweep {out}: {len(plan.almrs)} ALMR x {len(plan.lrs)} LR x {len(plan.seeds)} seed(s) + "
          f"reference, {plan.steps} steps x {plan.tokens_per_step:,} tokens = {plan.tokens:,} "
          f"tokens per run", flush=True)
    if launcher is None:
        write_plan(plan)
        return 0
    results = run_sweep(plan, launcher)
    for result in results:
        if result.status in ("failed", "submitted", "written"):
            print(f"{result.status}: {result.run} ({result.detail})")
    failed = [r for r in results if r.status == "failed"]
    if args.slurm:
        todo = [r for r in results if r.status != "skipped"]
        action = "submitted" if args.submit else f"written to {out}/sweep.sbatch (submit with sbatch)"
        print(f"{len(todo)} of {len(results)} runs {action}; follow: megatron-cpt almr status {out}")
        return 0
    print(f"{len(results) - len(failed)} of {len(results)} runs finished; "
          f"next: megatron-cpt almr fit {out}")
    return 1 if failed else 0


def reference_command(args) -> int:
    from megatron_cpt.almr.reference import evaluate_initial_weights
    from megatron_cpt.almr.sweep import require_initial_weights
    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.train.startup import start_ranks

    recipe = load_recipe(args.recipe, args.overrides)
    require_initial_weights(recipe.checkpoint)
    return start_ranks(recipe, "megatron_cpt.almr.reference", [args.recipe, *args.overrides],
                       lambda: evaluate_initial_weights(recipe) or 0,
                       several_nodes="run it in a sweep's Slurm job array (`megatron-cpt almr "
                                     "sweep ... --slurm`)")


def status_command(args) -> int:
    from megatron_cpt.almr.sweep import read_plan, run_state
    from megatron_cpt.run_files import LANGUAGE_LOSS

    plan = read_plan(args.sweep_dir)
    print(f"sweep {args.sweep_dir}: {len(plan.almrs)} ALMR x {len(plan.lrs)} LR x "
          f"{len(plan.seeds)} seed(s) ({_seed_list(plan.seeds)}), {plan.steps} steps x "
          f"{plan.tokens_per_step:,} tokens = {plan.tokens:,} tokens per run")
    print(f"  {'run':<32} {'almr':>6} {'lr':>9} {'seed':>6}  {'state':<12}" +
          "".join(f" {lang:>8}" for lang in plan.languages))
    counts: dict[str, int] = {}
    for run in plan.runs:
        state = run_state(plan.run_dir(run), plan.final_step(run))
        counts[state.status] = counts.get(state.status, 0) + 1
        label = state.status if state.status != "partial" else f"step {state.step}/{plan.steps}"
        losses = "".join(f" {_loss(state.final, LANGUAGE_LOSS + lang):>8}"
                         for lang in plan.languages) if state.final else ""
        almr = "-" if run.almr is None else f"{run.almr:g}"
        lr = "-" if run.lr is None else f"{run.lr:g}"
        seed = "-" if run.seed is None else str(run.seed)
        print(f"  {run.name:<32} {almr:>6} {lr:>9} {seed:>6}  {label:<12}{losses}")
    print(", ".join(f"{status} {count}" for status, count in sorted(counts.items())) +
          f" (of {len(plan.runs)})")
    return 0


def _seed_list(seeds) -> str:
    return ", ".join(str(s) for s in seeds) or "-"


def _loss(record: dict, key: str) -> str:
    value = record.get(key)
    return "NaN" if value is None else f"{value:.4f}"


def fit_command(args) -> int:
    from megatron_cpt.almr.fit import collect, fit, format_fit
    from megatron_cpt.almr.objective import Objective
    from megatron_cpt.almr.plots import write_plots

    target_lr = args.target_lr
    if args.target_recipe:
        from megatron_cpt.config.recipe import load_recipe

        target_lr = load_recipe(args.target_recipe).optim.lr
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap: must be >= 0, got {args.bootstrap}")
    original = [p.strip() for p in args.original.split(",") if p.strip()] if args.original else None
    objective = Objective(args.objective, tolerance=args.tolerance, weight=args.weight)
    result = fit(collect(args.sweep_dir, accuracy_task=args.accuracy), objective,
                 original=original, target_lr=target_lr,
                 bootstrap=args.bootstrap, seed=args.seed)
    out = Path(args.out or Path(args.sweep_dir) / "fit")
    # Everything goes to a temporary directory first: a failure leaves no partial output.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / "almr_fit.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        plots = write_plots(result, tmp)
        out.mkdir(exist_ok=True)
        for path in tmp.iterdir():
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(format_fit(result))
    print(f"wrote {out}/: almr_fit.json, " + ", ".join(p.name for p in plots))
    return 0
