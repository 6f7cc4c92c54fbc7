"""Launchers of sweep runs (``megatron_cpt.almr.sweep.Launcher``): the local one runs the points
on this machine one after another; a batch system's submits them (see ``run_sweep``)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Sequence

from megatron_cpt.almr.sweep import RECIPE, LaunchResult, PlannedRun, SweepPlan, run_state


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
