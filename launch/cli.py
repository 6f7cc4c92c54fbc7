"""``megatron-cpt launch slurm``: check a recipe against a Slurm allocation, write its batch
script into the run directory, and optionally submit it.

    megatron-cpt launch slurm examples/llama3_8b_cpt_8xh100_fp8.yaml --partition gpu \\
        --time 04:00:00 --submit
    docker build -t megatron-cpt . && enroot import -o megatron-cpt.sqsh dockerd://megatron-cpt
    megatron-cpt launch slurm examples/llama3_70b_cpt_64xh100_fp8.yaml optim.lr=1e-5 \\
        --partition gpu --account proj --time 2-00:00:00 --container-image "$PWD/megatron-cpt.sqsh"

It checks the layout against the allocation and prints the memory estimate per GPU (refusing a
layout that does not fit unless --force), writes RUN_DIR/job.recipe.yaml (the validated recipe the
job trains with) and RUN_DIR/job.sbatch, and prints the script's path; with --submit, the job id.
Nothing is written when a check fails. The container image must be the repository's Dockerfile
image (NVIDIA's PyTorch image has neither megatron-core nor megatron-cpt); the script mounts into it
every directory the job reads or writes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# NVIDIA's PyTorch image as such (nvcr.io#nvidia/pytorch:TAG for pyxis, or the docker name).
BARE_NGC_IMAGE = re.compile(r"nvcr\.io[#/]nvidia/pytorch:")


def register(verbs) -> None:
    parser = verbs.add_parser("launch", help="submit training jobs to Slurm",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="launcher", required=True, metavar="LAUNCHER")
    p = sub.add_parser("slurm", help="write (and submit) a Slurm batch script for a recipe",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="YAML recipe, e.g. examples/llama3_8b_cpt_8xh100_fp8.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides")
    add_job_arguments(p, required=True, signal_lead_default=(
        "from the checkpoint save time measured in RUN_DIR/metrics.jsonl"))
    p.add_argument("--nodes", type=int, help="default: the recipe's launch.nodes")
    p.add_argument("--gpus-per-node", type=int, metavar="G",
                   help="ranks per node; default: the recipe's launch.procs_per_node")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, metavar="GB",
                   help="memory per GPU for the estimate (default 80, H100)")
    p.add_argument("--force", action="store_true",
                   help="write (and submit) even when the memory estimate says it does not fit")
    p.add_argument("--submit", action="store_true", help="submit with sbatch and print the job id")
    p.set_defaults(func=run_slurm)


def add_job_arguments(group, required: bool, signal_lead_default: str) -> None:
    """The Slurm job flags that ``launch slurm`` and ``almr sweep --slurm`` share."""
    group.add_argument("--partition", required=required)
    group.add_argument("--time", required=required, metavar="HH:MM:SS",
                       help="time limit ([D-]HH:MM:SS)")
    group.add_argument("--account")
    group.add_argument("--container-image", metavar="IMG",
                       help="run the step in this image (pyxis): the repository's Dockerfile image")
    group.add_argument("--container-mounts", metavar="M",
                       help="extra pyxis mounts, SRC:DST[,SRC:DST]; the run, checkpoint, initial "
                            "weights, data and working directories are mounted at their own "
                            "paths unless these cover them")
    group.add_argument("--tasks", choices=("auto", "per-node", "per-gpu"), default="auto",
                       help="one task per node starting torchrun, or one task per GPU; auto "
                            "(default): torchrun where the job's torch is known to wait for a "
                            "stop save (2.11 or newer), else one task per GPU")
    group.add_argument("--signal-lead", type=int, metavar="S",
                       help=f"seconds between Slurm's warning and the time limit (default: "
                            f"{signal_lead_default})")
    group.add_argument("--python", help="interpreter on the nodes (default: this one, or "
                                        "`python` in a container)")


def check_job_arguments(args) -> None:
    """The job's own flags, before the recipe and data checks (a typo in --time should not wait
    for them)."""
    from megatron_cpt.errors import UserError
    from megatron_cpt.launch.slurm import SlurmJob

    if args.signal_lead is not None and args.signal_lead <= 0:
        raise UserError(f"--signal-lead: expected seconds > 0, got {args.signal_lead}")
    if args.container_image and BARE_NGC_IMAGE.search(args.container_image):
        raise UserError(f"--container-image: {args.container_image} has neither megatron-core nor "
                        f"megatron-cpt; build the repository's Dockerfile on it (docker build -t "
                        f"megatron-cpt .) and pass that image")
    SlurmJob(partition=args.partition, time=args.time, nodes=1, gpus_per_node=1,
             signal_lead_s=0).validate()


def job_from_arguments(args, nodes: int, gpus_per_node: int, signal_lead_s: int,
                       lead_reason: str):
    from megatron_cpt.launch.slurm import SlurmJob, job_torch_version, resolve_tasks

    python = args.python or ("python" if args.container_image else sys.executable)
    tasks, tasks_reason = resolve_tasks(args.tasks, job_torch_version(python, args.container_image))
    return SlurmJob(partition=args.partition, time=args.time, nodes=nodes,
                    gpus_per_node=gpus_per_node, account=args.account,
                    container_image=args.container_image, container_mounts=args.container_mounts,
                    tasks=tasks, tasks_reason=tasks_reason, signal_lead_s=signal_lead_s,
                    lead_reason=lead_reason, python=python)


def _check_memory(recipe, gpu_memory_gb: float, force: bool) -> None:
    from megatron_cpt.errors import UserError
    from megatron_cpt.profile.memory import GB, estimate_memory, format_estimate

    estimate = estimate_memory(recipe, gpu_memory_gb)
    print(format_estimate(estimate))
    if not estimate.fits and not force:
        raise UserError(
            f"memory: stage {estimate.most_loaded.stage} needs "
            f"{estimate.most_loaded.total / GB:.1f} GB per GPU, more than the "
            f"{estimate.usable_bytes / GB:.1f} GB usable of {gpu_memory_gb:g} GB (estimate above); "
            f"change the layout (parallel.*, model.recompute) or pass --force")


def run_slurm(args) -> int:
    import yaml

    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.errors import UserError
    from megatron_cpt.files import write_atomic
    from megatron_cpt.launch.allocation import fit_to_allocation
    from megatron_cpt.launch.slurm import render_sbatch, signal_lead_seconds, submit
    from megatron_cpt.runtime.quiet import quiet_known_warnings
    from megatron_cpt.run_files import read_metrics
    from megatron_cpt.train.startup import check_inputs
    from megatron_cpt.train.state import checkpoint_dir

    quiet_known_warnings()
    check_job_arguments(args)
    recipe = load_recipe(args.recipe, args.overrides)
    nodes = args.nodes if args.nodes is not None else recipe.launch.nodes
    gpus = args.gpus_per_node if args.gpus_per_node is not None else recipe.launch.procs_per_node
    recipe = fit_to_allocation(recipe, nodes, gpus)
    run_dir = Path(recipe.logging.run_dir).resolve()
    if any(c.isspace() for c in str(run_dir)):
        raise UserError(f"logging.run_dir: '{run_dir}' contains whitespace, which #SBATCH "
                        f"--output cannot hold")
    recipe.logging.run_dir = str(run_dir)
    if recipe.launch.accelerator == "gpu":
        _check_memory(recipe, args.gpu_memory_gb, args.force)
    check_inputs(recipe)  # data files and initial weights, as `megatron-cpt train` checks them
    if args.signal_lead is not None:
        lead, reason = args.signal_lead, "--signal-lead"
    else:
        measured = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
        lead, reason = signal_lead_seconds(measured)
    job = job_from_arguments(args, nodes, gpus, lead, reason)
    recipe_path = run_dir / "job.recipe.yaml"
    script = render_sbatch(recipe, str(recipe_path), job, source=args.recipe,
                           workdir=str(Path.cwd()))
    run_dir.mkdir(parents=True, exist_ok=True)
    # A container mounts the checkpoint directory, which must then exist before the job starts.
    checkpoint_dir(recipe).mkdir(parents=True, exist_ok=True)
    write_atomic(recipe_path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    script_path = run_dir / "job.sbatch"
    write_atomic(script_path, script, mode=0o755)
    print(script_path)
    if args.submit:
        print(f"submitted job {submit(script_path)}")
    return 0
