"""Launchers of sweep runs (``megatron_cpt.almr.sweep.Launcher``): the local one runs the points
on this machine one after another; the Slurm one submits them as one job array."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from megatron_cpt.almr.sweep import RECIPE, LaunchResult, PlannedRun, SweepPlan, run_state
from megatron_cpt.errors import UserError
from megatron_cpt.files import write_atomic

_UNSAFE = re.compile(r'[\s"$`\\]')
JOB_FILE = "slurm_job_id"  # in the sweep directory: the job array last submitted


class LocalLauncher:
    """Each run as its own ``megatron-cpt train`` (or reference evaluation) on this machine, its
    output appended to ``RUN_DIR/run.log``; returns when all have ended."""

    def __init__(self, progress: bool = True):
        self.progress = progress

    def launch(self, plan: SweepPlan, runs: Sequence[PlannedRun]) -> list[LaunchResult]:
        from tqdm import tqdm

        results = []
        bar = tqdm(runs, desc="almr sweep", unit="run", disable=not self.progress)
        for run in bar:
            bar.set_postfix_str(run.name)
            run_dir = plan.run_dir(run)
            log = run_dir / "run.log"
            start = time.perf_counter()
            with open(log, "a") as out:
                code = subprocess.call([sys.executable, *run.local_command(run_dir / RECIPE)],
                                       stdout=out, stderr=subprocess.STDOUT)
            state = run_state(run_dir, plan.final_step(run))
            status = "finished" if state.finished else "failed"
            detail = f"{state.status}, exit status {code}, {time.perf_counter() - start:.0f} s, {log}"
            bar.write(f"{run.name}: {status} ({detail})")
            results.append(LaunchResult(run.name, status, detail))
        return results


class SlurmLauncher:
    """All runs as one Slurm job array through ``megatron_cpt.launch.slurm``: task i trains run i
    (the reference with its own module). Writes ``SWEEP_DIR/sweep.sbatch`` and, with ``submit``,
    submits it and returns at once; ``almr status`` follows the runs. Every task asks for the
    recipe's ``launch.nodes`` x ``launch.procs_per_node``, and a task stopped at its time limit
    with a checkpoint requeues itself like any training job."""

    def __init__(self, job, submit: bool, max_parallel: Optional[int] = None,
                 workdir: Optional[str] = None):
        self.job, self.submit, self.max_parallel, self.workdir = job, submit, max_parallel, workdir

    def render(self, plan: SweepPlan, runs: Sequence[PlannedRun]) -> str:
        """The array script (pure): one task per run, in the order given."""
        from megatron_cpt.config.recipe import recipe_from_dict
        from megatron_cpt.launch.allocation import fit_to_allocation
        from megatron_cpt.launch.slurm import ArrayTasks, render_sbatch

        sweep_dir = str(Path(plan.sweep_dir).resolve())
        if _UNSAFE.search(sweep_dir):
            raise UserError(f"--out: '{sweep_dir}' holds whitespace or one of \" $ ` \\, which the "
                            f"batch script cannot quote")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise UserError(f"--max-parallel: must be >= 1, got {self.max_parallel}")
        first = next(r for r in plan.runs if r.kind == "train")
        recipe = recipe_from_dict(first.recipe)
        recipe.logging.run_dir = sweep_dir
        recipe = fit_to_allocation(recipe, self.job.nodes, self.job.gpus_per_node)
        array = ArrayTasks(runs=tuple(r.name for r in runs),
                           modules=tuple(r.worker_module for r in runs),
                           max_parallel=self.max_parallel)
        return render_sbatch(recipe, "", self.job, source=plan.recipe_source,
                             workdir=self.workdir, array=array)

    def launch(self, plan: SweepPlan, runs: Sequence[PlannedRun]) -> list[LaunchResult]:
        from megatron_cpt.launch.slurm import submit

        path = write_atomic(Path(plan.sweep_dir) / "sweep.sbatch", self.render(plan, runs),
                            mode=0o755)
        if not self.submit:
            return [LaunchResult(r.name, "written", f"task {i} of {path}")
                    for i, r in enumerate(runs)]
        job_id = submit(path)
        write_atomic(Path(plan.sweep_dir) / JOB_FILE, job_id + "\n")
        return [LaunchResult(r.name, "submitted", f"job {job_id}_{i}") for i, r in enumerate(runs)]


def listed_by_squeue(returncode: int, stdout: str, stderr: str) -> Optional[bool]:
    """What ``squeue -h -j JOB`` says: True while the job (any task of an array) is pending or
    running, False once it has ended (no line; or, after slurmctld forgot it, "Invalid job id"),
    None when it cannot tell (slurmctld unreachable, ...)."""
    if returncode == 0:
        return bool(stdout.strip())
    if "invalid job id" in stderr.lower():
        return False
    return None


def refuse_while_submitted(sweep_dir: str | Path) -> None:
    """Refuse to start or submit runs of a sweep whose submitted job array is still queued or
    running: its tasks would train in the same run directories."""
    path = Path(sweep_dir) / JOB_FILE
    if not path.is_file():
        return
    job = path.read_text().strip()
    undo = f"rerun where squeue works, or remove {path} once job {job} has ended"
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True,
                              timeout=60)
    except FileNotFoundError:
        raise UserError(f"{path}: this sweep was submitted as Slurm job {job}, and squeue is not "
                        f"on PATH to tell whether it is still queued or running; {undo}") from None
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess([], 1, "", "no answer in 60 s")
    listed = listed_by_squeue(proc.returncode, proc.stdout, proc.stderr)
    if listed is None:
        said = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise UserError(f"{path}: cannot tell whether Slurm job {job} of this sweep is still "
                        f"queued or running (squeue: {said}); {undo}")
    if listed:
        raise UserError(f"{path}: Slurm job {job} of this sweep is still queued or running "
                        f"(squeue -j {job}); rerun when it has ended, or scancel {job} first")
