"""Slurm batch scripts for training jobs: render (pure), write, submit.

    megatron-cpt launch slurm examples/llama3_70b_cpt_64xh100_fp8.yaml --partition gpu \\
        --time 24:00:00 --submit

One task per node starts torchrun (c10d rendezvous on the allocation's first host), or, with
``tasks="per-gpu"``, one task per GPU that maps ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``
to ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (``megatron_cpt.launch.environment``); ``resolve_tasks``
picks torchrun only where the job's torch lets it wait for a stop save (``launch/node.py``). The
script asks for a warning (``--signal=B:USR1@lead``) before the time limit, turns it into SIGTERM
for the training step, and requeues the job when the run stopped early with a checkpoint, or was
killed or crashed after saving a newer one (``megatron_cpt.launch.requeue``). In a container image it mounts every directory the job reads
or writes (``container_mounts``). Why: docs/LAUNCH.md.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

from megatron_cpt.config.recipe import Recipe
from megatron_cpt.errors import UserError
from megatron_cpt.launch.environment import job_environment, slurm_cpu_threads
from megatron_cpt.launch.node import torchrun_waits_for_saves
from megatron_cpt.run_files import blocking_save_times

# Rendezvous ports, away from Slurm's 6817/6818 and the ephemeral range: PORT_BASE +
# (job id % (PORT_SPAN / RESTART_SLOTS)) * RESTART_SLOTS + restart % RESTART_SLOTS. Two jobs whose ids
# are less than 1250 apart never share a port, whatever their restarts (job 4's restart and job 5's
# first start met under job id + restart); a job's start reuses the port of its start 8 earlier.
PORT_BASE, PORT_SPAN, RESTART_SLOTS = 20000, 10000, 8
# Slurm may deliver --signal up to 60 s early or late (its event loop's resolution).
SLURM_SIGNAL_SLACK_S = 60
DEFAULT_LEAD_S = 600
_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class SlurmJob:
    """What the batch script asks Slurm for, beyond the recipe."""

    partition: str
    time: str  # [D-]HH:MM:SS
    nodes: int
    gpus_per_node: int  # ranks per node (GPUs, or CPU processes for a cpu recipe)
    account: Optional[str] = None
    container_image: Optional[str] = None
    container_mounts: Optional[str] = None
    tasks: Literal["per-node", "per-gpu"] = "per-node"
    tasks_reason: str = ""  # why this form (resolve_tasks), for a comment in the script
    signal_lead_s: int = DEFAULT_LEAD_S
    lead_reason: str = "default"
    python: str = "python"

    def time_limit_s(self) -> int:
        match = _TIME.match(self.time)
        if not match:
            raise UserError(f"--time: expected HH:MM:SS or D-HH:MM:SS, got '{self.time}'")
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds

    def validate(self) -> None:
        if not self.partition or any(c.isspace() for c in self.partition):
            raise UserError(f"--partition: expected a partition name, got '{self.partition}'")
        limit = self.time_limit_s()
        if limit <= 0:
            raise UserError(f"--time: must be longer than zero, got '{self.time}'")
        if self.signal_lead_s + SLURM_SIGNAL_SLACK_S >= limit:
            raise UserError(
                f"--time: {self.time} is shorter than the {self.signal_lead_s} s the job needs to "
                f"save before its end ({self.lead_reason}) plus the {SLURM_SIGNAL_SLACK_S} s by "
                f"which Slurm may send its warning early; ask for more time or a smaller "
                f"--signal-lead")
        if self.tasks not in ("per-node", "per-gpu"):
            raise UserError(f"--tasks: expected per-node or per-gpu, got '{self.tasks}'")


def job_torch_version(python: str, container_image: Optional[str]) -> Optional[str]:
    """The torch the job's ranks will import, where it can be read before submitting: that of
    ``python`` (this interpreter, or ``--python`` on a shared filesystem). None in a container
    image, or when ``python`` does not run here."""
    if container_image:
        return None
    if python == sys.executable:
        return importlib.metadata.version("torch")
    query = "import importlib.metadata as m; print(m.version('torch'))"
    try:
        proc = subprocess.run([python, "-c", query], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def resolve_tasks(requested: str, torch_version: Optional[str]) -> tuple[str, str]:
    """(``per-node`` or ``per-gpu``, why) for ``--tasks auto|per-node|per-gpu``.

    A stop save (preemption, time limit) can take minutes. torchrun waits for it only from torch
    2.11 (``launch/node.py``); one task per GPU has no torchrun, so nothing but the time limit cuts
    it short. ``auto`` takes torchrun only when the job's torch is known to be 2.11 or newer.
    """
    new_enough = torch_version is not None and torchrun_waits_for_saves(torch_version)
    if requested == "per-gpu":
        return "per-gpu", "--tasks per-gpu"
    if requested == "per-node":
        if torch_version is not None and not new_enough:
            raise UserError(f"--tasks per-node: the job's torch {torch_version} has a torchrun that "
                            f"SIGKILLs the ranks 30 s after SIGTERM, in the middle of a stop save "
                            f"(torch >= 2.11 waits); use --tasks per-gpu or auto")
        return "per-node", ("--tasks per-node" if new_enough else
                            "--tasks per-node; each node checks its torch before it starts")
    if new_enough:
        return "per-node", f"torch {torch_version}: torchrun waits for the stop save"
    known = f"torch {torch_version}" if torch_version else "a torch that cannot be read here"
    return "per-gpu", f"{known}: torchrun before 2.11 would SIGKILL the ranks 30 s into a stop save"


def container_mounts(recipe: Recipe, workdir: Optional[str], requested: Optional[str]) -> str:
    """pyxis ``--container-mounts``: ``requested`` (SRC:DST[:FLAGS],...) plus each directory the job
    reads or writes that no requested destination covers, at its own path: the working directory
    (relative paths), the run directory (logs, metrics, ``job.recipe.yaml``), the checkpoint
    directory, the initial weights and the data. The recipe's paths are those the login node
    checked, so they exist at the same paths on a shared filesystem."""
    from megatron_cpt.train.state import checkpoint_dir

    base = Path(workdir or ".")
    needed = [base, Path(recipe.logging.run_dir), checkpoint_dir(recipe)]
    if recipe.checkpoint.pretrained:
        needed.append(Path(recipe.checkpoint.pretrained))
    needed += [Path(source.prefix).parent for source in recipe.data.sources()]
    entries = [entry for entry in (requested or "").split(",") if entry]
    covered = [Path(entry.split(":")[1] if ":" in entry else entry) for entry in entries]
    for directory in sorted({(base / path).resolve() for path in needed}):
        if not any(directory == c or c in directory.parents for c in covered):
            entries.append(f"{directory}:{directory}")
            covered.append(directory)
    return ",".join(entries)


def signal_lead_seconds(metrics: list[dict]) -> tuple[int, str]:
    """How long before the time limit the warning must come: the slowest step plus twice the
    slowest checkpoint save measured in this run's metrics, plus Slurm's signal slack."""
    saves = blocking_save_times(metrics)
    steps = [r["step_time_s"] for r in metrics if r.get("step_time_s") is not None]
    if not saves:
        return DEFAULT_LEAD_S, "default: no blocking checkpoint save in the run's metrics.jsonl yet"
    lead = math.ceil(max(steps, default=0.0) + 2 * max(saves)) + SLURM_SIGNAL_SLACK_S
    return lead, (f"slowest step {max(steps, default=0.0):.0f} s + 2 x slowest save "
                  f"{max(saves):.0f} s + {SLURM_SIGNAL_SLACK_S} s slack, from metrics.jsonl")


@dataclass(frozen=True)
class ArrayTasks:
    """A job array: task i runs ``modules[i]`` on ``RUN_DIR/runs[i]/recipe.yaml``, where RUN_DIR is
    the recipe's ``logging.run_dir`` (the sweep directory of ``megatron-cpt almr sweep``)."""

    runs: tuple[str, ...]
    modules: tuple[str, ...]
    max_parallel: Optional[int] = None  # tasks running at once (``--array=...%N``)

    def sbatch_line(self) -> str:
        limit = f"%{self.max_parallel}" if self.max_parallel else ""
        return f"#SBATCH --array=0-{len(self.runs) - 1}{limit}\n"

    def shell_lines(self) -> str:
        return ("# Job array: task i runs module MODULES[i] in run directory RUNS[i].\n"
                f"RUNS=({' '.join(shlex.quote(r) for r in self.runs)})\n"
                f"MODULES=({' '.join(shlex.quote(m) for m in self.modules)})\n"
                'MODULE="${MODULES[$SLURM_ARRAY_TASK_ID]}"\n')


def torchrun_command(python: str, nodes: int, procs_per_node: int, endpoint: str, rdzv_id: str,
                     join_timeout_s: int, recipe_path: str,
                     module: str = "megatron_cpt.train.worker") -> list[str]:
    """The command each node runs: one torchrun that joins a c10d rendezvous at ``endpoint``,
    started through ``launch/node.py``, which first checks that it waits for a stop save."""
    return [python, "-m", "megatron_cpt.launch.node", f"--nnodes={nodes}",
            f"--nproc-per-node={procs_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=join_timeout={join_timeout_s}", "--max-restarts=0",
            "--module", module, recipe_path]


def _shell_word(word: str) -> str:
    """Quote for bash, leaving ``$VAR`` references of the script to expand."""
    return f'"{word}"' if "$" in word else shlex.quote(word)


def _join(words: list[str]) -> str:
    return " ".join(_shell_word(w) for w in words)


def _join_lines(words: list[str]) -> str:
    """One line per ``--option`` (with the words that follow it), continued with backslashes."""
    lines: list[list[str]] = [[]]
    for word in words:
        if word.startswith("--") and lines[-1]:
            lines.append([])
        lines[-1].append(word)
    return " \\\n    ".join(_join(line) for line in lines)


def render_sbatch(recipe: Recipe, recipe_path: str, job: SlurmJob, source: str,
                  workdir: Optional[str] = None, array: Optional[ArrayTasks] = None) -> str:
    """The batch script (pure: the same inputs give the same text). With ``array``, one job array
    whose task i runs ``RUN_DIR/runs[i]`` (``recipe_path`` is not used then)."""
    job.validate()
    module = "$MODULE" if array else "megatron_cpt.train.worker"
    run_dir = recipe.logging.run_dir
    run_dir_q, recipe_q = shlex.quote(run_dir), shlex.quote(recipe_path)
    if array:
        run_dir_q = '"' + run_dir + '/${RUNS[$SLURM_ARRAY_TASK_ID]}"'
        recipe_q = '"$RUN_DIR/recipe.yaml"'
    env = job_environment(recipe, shutdown_timeout_s=job.signal_lead_s,
                          cpu_threads=slurm_cpu_threads(recipe.launch))
    names = list(env)
    per_gpu = job.tasks == "per-gpu"
    tasks_per_node = job.gpus_per_node if per_gpu else 1
    cpus = f"$(( SLURM_CPUS_ON_NODE / {tasks_per_node} ))" if per_gpu else "$SLURM_CPUS_ON_NODE"
    container = []
    if job.container_image:
        # pyxis keeps an image's own value of a variable unless it is named here, and the image
        # sees only the host directories mounted into it.
        container = [f"--container-image={job.container_image}",
                     f"--container-env={','.join(names)}",
                     f"--container-mounts={container_mounts(recipe, workdir, job.container_mounts)}"]
        if workdir:
            container.append(f"--container-workdir={workdir}")
    srun = ["--kill-on-bad-exit=1", f"--ntasks-per-node={tasks_per_node}",
            f"--cpus-per-task={cpus}", *container]
    why = f": {job.tasks_reason}" if job.tasks_reason else ""
    if per_gpu:
        step = ["$PYTHON", "-m", module, "$RECIPE"]
        rendezvous = (f"# One task per GPU{why}.\n# Each maps SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID "
                      f"to RANK/WORLD_SIZE/LOCAL_RANK.\n"
                      f"export MASTER_ADDR=\"$HEAD_ADDR\" MASTER_PORT=\"$RDZV_PORT\"\n")
    else:
        step = torchrun_command("$PYTHON", job.nodes, job.gpus_per_node,
                                "$HEAD_ADDR:$RDZV_PORT", "$RDZV_ID",
                                recipe.launch.dist_timeout_minutes * 60, "$RECIPE", module)
        rendezvous = f'# torchrun on each node{why}.\nRDZV_ID="$SLURM_JOB_ID-$RESTART"\n'
    gpus = recipe.launch.accelerator == "gpu"
    template = resources.files("megatron_cpt.launch").joinpath("templates/sbatch.sh").read_text()
    return string.Template(template).substitute(
        source=source,
        generator="megatron-cpt almr sweep" if array else "megatron-cpt launch slurm",
        job_name=Path(recipe.logging.run_dir).name or "megatron-cpt",
        partition=job.partition,
        account_line=f"#SBATCH --account={job.account}\n" if job.account else "",
        nodes=job.nodes,
        tasks_per_node=tasks_per_node,
        gpus_line=f"#SBATCH --gpus-per-node={job.gpus_per_node}\n" if gpus else "",
        time=job.time,
        output=f"{run_dir}/slurm-%A_%a.out" if array else f"{run_dir}/slurm-%j.out",
        chdir_line=f"#SBATCH --chdir={workdir}\n" if workdir else "",
        signal_lead_s=job.signal_lead_s,
        lead_reason=job.lead_reason,
        run_dir_q=run_dir_q,
        recipe_q=recipe_q,
        array_line=array.sbatch_line() if array else "",
        task_lines=array.shell_lines() if array else "",
        python_q=shlex.quote(job.python),
        env_exports="\n".join(f"export {k}={_shell_word(v)}" for k, v in env.items()),
        port_base=PORT_BASE,
        job_slots=PORT_SPAN // RESTART_SLOTS,
        restart_slots=RESTART_SLOTS,
        rendezvous_lines=rendezvous,
        srun_flags=_join(srun),
        decide_srun_flags=_join(["--nodes=1", "--ntasks=1", *container]),
        step_command=_join_lines(step),
    )


def submit(script: Path) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True,
                              text=True, timeout=120)
    except FileNotFoundError:
        raise UserError("--submit: sbatch is not on PATH (run on a Slurm login node, or submit "
                        f"{script} there)") from None
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        if "gres" in message.lower() and "--gpus-per-node" in script.read_text():
            message += (" (the script asks for GPUs because the recipe's launch.accelerator is "
                        "gpu; on a cluster without GPUs set launch.accelerator=cpu)")
        raise UserError(f"--submit: sbatch refused {script}: {message}")
    return proc.stdout.strip().split(";")[0]
