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
    output appended to ``RUN_DIR/run.log``, ``parallel`` runs at a time (each with its recipe's
    ranks and threads); returns when all have ended."""

    def __init__(self, progress: bool = True, parallel: int = 1):
        self.progress, self.parallel = progress, parallel

    def check(self, plan: SweepPlan) -> None:
        """Before anything is written: runs at once must not build one data cache together."""
        if self.parallel < 1:
            raise UserError(f"--parallel: must be >= 1, got {self.parallel}")
        shared = {r.recipe["data"].get("cache_dir") for r in plan.runs} - {None}
        if self.parallel > 1 and shared:
            raise UserError(f"data.cache_dir: {', '.join(sorted(shared))} would be written by "
                            f"{self.parallel} runs at once (--parallel); leave it unset, so that "
                            f"each run keeps its cache in its run directory")

    def launch(self, plan: SweepPlan, runs: Sequence[PlannedRun]) -> list[LaunchResult]:
        from tqdm import tqdm

        self.check(plan)
        bar = tqdm(total=len(runs), desc="almr sweep", unit="run", disable=not self.progress)
        waiting, running, done = list(runs), {}, {}
        while waiting or running:
            while waiting and len(running) < self.parallel:
                run = waiting.pop(0)
                log = plan.run_dir(run) / "run.log"
                with open(log, "a") as out:
                    process = subprocess.Popen([sys.executable,
                                                *run.local_command(plan.run_dir(run) / RECIPE)],
                                               stdout=out, stderr=subprocess.STDOUT)
                running[run.name] = (run, process, time.perf_counter())
                bar.set_postfix_str(", ".join(running))
            ended = [name for name, (_, process, _) in running.items() if process.poll() is not None]
            if not ended:
                time.sleep(0.2)
                continue
            for name in ended:
                run, process, start = running.pop(name)
                state = run_state(plan.run_dir(run), plan.final_step(run))
                status = "finished" if state.finished else "failed"
                detail = (f"{state.status}, exit status {process.returncode}, "
                          f"{time.perf_counter() - start:.0f} s, {plan.run_dir(run) / 'run.log'}")
                bar.write(f"{run.name}: {status} ({detail})")
                bar.update()
                done[name] = LaunchResult(run.name, status, detail)
        bar.close()
        return [done[run.name] for run in runs]


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
