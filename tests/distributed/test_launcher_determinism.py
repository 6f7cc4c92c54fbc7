"""The same recipe and layout trains to bitwise the same losses whichever launcher starts it:
`megatron-cpt train` with forked CPU ranks or through torchrun, and the Slurm batch script with
torchrun on the node or one srun task per rank (the script run by bash, with stand-ins for srun
and scontrol that start the tasks on this machine). On every path the ranks take the recipe's
thread count rule (the node's CPUs over its ranks), not the shell's ``OMP_NUM_THREADS``, and each
start records the count in progress.jsonl and layout.json."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import losses, train
from token_fixtures import byte_run_overrides

from megatron_cpt.run_files import read_starts

FAKE_SRUN = '''#!{python}
"""srun on one node: start --ntasks-per-node (or --ntasks) copies of the command with the
variables Slurm gives each task; its status is the first failing task's."""
import os, subprocess, sys
args, tasks = sys.argv[1:], 1
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option.startswith(("--ntasks-per-node=", "--ntasks=")):
        tasks = int(option.split("=", 1)[1])
procs = [subprocess.Popen(args, env={{**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                                      "SLURM_NTASKS": str(tasks), "SLURM_NODEID": "0"}})
         for i in range(tasks)]
codes = [p.wait() for p in procs]
sys.exit(next((c for c in codes if c), 0))
'''


@pytest.fixture(scope="module")
def overrides(byte_data):
    return byte_run_overrides(byte_data, steps=4, global_batch_size=8, warmup_steps=1) + [
        "checkpoint.save_at_end=false", "data.batch_digest=false"]


def _free_job_id(script: str) -> int:
    """A job id whose rendezvous port, as the script computes it for a first start, is free."""
    line = next(line for line in script.splitlines() if line.startswith("RDZV_PORT="))
    for job_id in range(4700, 14700, 97):
        port = subprocess.run(["bash", "-c", f'RESTART=0 SLURM_JOB_ID={job_id}; {line}; '
                                             f'echo "$RDZV_PORT"'],
                              capture_output=True, text=True, check=True).stdout
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", int(port)))
            except OSError:
                continue
            return job_id
    raise AssertionError("no free rendezvous port")


def _run_batch_script(overrides: list[str], run_dir: Path, tasks: str, tmp_path: Path) -> None:
    from megatron_cpt.cli import main

    # In this process: the script is what `megatron-cpt launch slurm` writes.
    assert main(["launch", "slurm", str(TINY), *overrides, f"logging.run_dir={run_dir}",
                 "--partition", "debug", "--time", "00:20:00", "--signal-lead", "120",
                 "--tasks", tasks]) == 0
    bin_dir = tmp_path / f"bin-{tasks}"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")  # show hostnames
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "7",
           "SLURM_JOB_ID": str(_free_job_id((run_dir / "job.sbatch").read_text())),
           "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_ON_NODE": str(len(os.sched_getaffinity(0)))}
    proc = subprocess.run(["bash", str(run_dir / "job.sbatch")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


TINY = Path(__file__).resolve().parents[2] / "examples" / "llama3_tiny_cpt_2xcpu.yaml"


def test_every_launcher_gives_the_same_losses_and_records_the_thread_count(overrides, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the shell's: no launcher may pass it on
    runs = {}
    for name, launcher in (("forked", "launch.accelerator=cpu"),
                           ("torchrun", "launch.accelerator=gpu")):  # no GPU here: CPU ranks
        runs[name] = tmp_path / name
        train([*overrides, launcher, f"logging.run_dir={runs[name]}"])
    for tasks in ("per-node", "per-gpu"):
        runs[f"slurm {tasks}"] = tmp_path / f"slurm-{tasks}"
        _run_batch_script([*overrides, "launch.accelerator=cpu"], runs[f"slurm {tasks}"], tasks,
                          tmp_path)

    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # 2 ranks on this machine's CPUs
    reference = losses(runs["forked"])
    assert len(reference) == 4
    for name, run_dir in runs.items():
        assert losses(run_dir) == reference, name
        (start,) = read_starts(run_dir)
        assert start.cpu_threads == threads, name
        layout = json.loads((run_dir / "layout.json").read_text())
        assert layout["cpu_threads"] == threads and layout["cpu_capability"], name
