"""Starts the local launcher (``run_local``, 2 ranks of ``stop_at_startup_worker``) again and again
and sends each launcher one SIGTERM at some moment of its start; prints one JSON line per launch:
the moment, the launcher's exit status (null: it hung and was killed), the ranks that stopped on
the signal, the processes of the launch still running after it ended (then killed), and the end of
its output.

    python stop_at_startup_host.py OUT_DIR SEED FORKED_LAUNCHES TORCHRUN_LAUNCHES

Each launcher is forked from this process and calls ``run_local`` at once. This process has
imported torch, and ``PRELOAD`` is narrowed to torch (all that these ranks need), so a launch of
forked ranks costs a fraction of a second of CPU. A moment is counted from when the launcher has
made its report directory, which ``run_local`` does after installing its SIGTERM handler. Forked
launches get a random moment within FORKED_SPAN_S, while the launcher forks its ranks and the ranks
start; torchrun launches one within TORCHRUN_SPAN_S (torchrun starting, then its ranks), and the
first of them the moment torchrun's first rank appears.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

from megatron_cpt.launch import rank_processes
from megatron_cpt.launch.local import run_local
from megatron_cpt.runtime.quiet import quiet_known_warnings

NPROCS = 2
FORKED_SPAN_S = 0.15
TORCHRUN_SPAN_S = 3.0
START_TIMEOUT_S = 60  # for the launcher's report directory
STOP_TIMEOUT_S = 60  # for the launcher to end after the signal; less than the worker's WAIT_S
FIRST_RANK = "first torchrun rank"


def _launcher(out: Path, tmp: Path, env: dict[str, str]) -> None:
    """In the forked child: run the launch, output to OUT/log, and exit with its status."""
    status = 1
    try:
        log = os.open(out / "log", os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        tempfile.tempdir = str(tmp)
        status = run_local("stop_at_startup_worker", [str(out)], NPROCS, env=env)
    except BaseException as exc:  # noqa: BLE001 - reported in the log, the status says it failed
        print(f"launcher raised {exc!r}", file=sys.stderr, flush=True)
    finally:
        os._exit(status)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _torchrun_has_a_rank(launcher: int) -> bool:
    try:
        return any(torchrun.children() for torchrun in psutil.Process(launcher).children())
    except psutil.NoSuchProcess:
        return False


def _wait_for_the_moment(launcher: int, tmp: Path, moment: float | str) -> None:
    """Until the launcher has made its report directory (in TMP), then ``moment`` seconds, or
    until torchrun's first rank exists; at once if the launcher ends or START_TIMEOUT_S passes."""
    process = psutil.Process(launcher)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any(tmp.iterdir()):
        if not _running(process) or time.monotonic() > deadline:
            return
        time.sleep(0.0005)
    if moment != FIRST_RANK:
        time.sleep(moment)
        return
    while not _torchrun_has_a_rank(launcher):
        if not _running(process) or time.monotonic() > deadline:
            return
        time.sleep(0.001)


def _exit_status(pid: int, timeout_s: float) -> int | None:
    """The launcher's exit status once it has ended, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(wait_status)
        time.sleep(0.005)
    return None


def launch(out: Path, env: dict[str, str], moment: float | str) -> dict:
    tmp = out / "tmp"
    tmp.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:
        _launcher(out, tmp, env)
    seen: list[psutil.Process] = []
    status = None
    try:
        _wait_for_the_moment(pid, tmp, moment)
        seen = _tree(pid)
        os.kill(pid, signal.SIGTERM)
        seen += _tree(pid)
        status = _exit_status(pid, STOP_TIMEOUT_S)
    finally:
        if status is None:
            seen += _tree(pid)
        left_running = set()
        for process in seen:
            if process.pid != pid and _running(process):
                left_running.add(process.pid)
                try:
                    process.kill()  # psutil checks that it is still the same process
                except psutil.NoSuchProcess:
                    pass
        if status is None:
            _kill_and_reap(pid)
    stopped = sorted(int(p.name.split("_")[1]) for p in out.glob("stopped_*"))
    return {"moment": moment, "status": status, "stopped": stopped,
            "left_running": sorted(left_running),
            "output": (out / "log").read_text(errors="replace")[-1500:]}


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def main(out_dir: str, seed: str, forked: str, torchrun: str) -> int:
    quiet_known_warnings()
    rank_processes.PRELOAD = ("torch",)
    import torch  # noqa: F401
    rng = random.Random(int(seed))
    pythonpath = os.pathsep.join([str(Path(__file__).resolve().parent),
                                  os.environ.get("PYTHONPATH", "")])
    forked_env = {"CUDA_VISIBLE_DEVICES": ""}  # ranks_see_no_gpu
    torchrun_env = {"PYTHONPATH": pythonpath}  # for torchrun's fresh interpreters
    plan = [("forked", forked_env, rng.uniform(0, FORKED_SPAN_S)) for _ in range(int(forked))]
    plan += [("torchrun", torchrun_env, FIRST_RANK if i == 0 else rng.uniform(0, TORCHRUN_SPAN_S))
             for i in range(int(torchrun))]
    for number, (kind, env, moment) in enumerate(plan):
        result = launch(Path(out_dir) / f"launch_{number}", env, moment)
        print(json.dumps({"kind": kind, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
