"""Run `megatron-cpt train` in a subprocess and read what it wrote."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(args: list[str], timeout: float = 600, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "megatron_cpt", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"megatron-cpt {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}")
    return proc


def train(overrides: list[str], recipe: Path = TINY_RECIPE, **kwargs) -> subprocess.CompletedProcess:
    return run_cli(["train", str(recipe), *overrides], **kwargs)


def write_initial_weights(out_dir: Path, overrides: list[str], recipe: Path = TINY_RECIPE) -> Path:
    env = dict(os.environ, MASTER_PORT=str(free_port()))
    script = Path(__file__).with_name("write_initial_weights.py")
    proc = subprocess.run([sys.executable, str(script), str(recipe), str(out_dir), *overrides],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out_dir


def layout_comparison_overrides(data: Path, initial_weights: Path) -> list[str]:
    """The runs that are compared across layouts and with resumed runs (test_parallel_parity,
    test_resume): 10 steps on the byte tokens from the shared initial weights, no checkpoint."""
    from token_fixtures import byte_run_overrides

    return byte_run_overrides(data, steps=10, global_batch_size=8, warmup_steps=2) + [
        f"checkpoint.pretrained={initial_weights}", "checkpoint.save_at_end=false",
        "checkpoint.save_interval=0"]


def metrics(run_dir: Path) -> list[dict]:
    from megatron_cpt.run_files import read_metrics

    return read_metrics(run_dir)


def losses(run_dir: Path) -> list[float]:
    return [record["loss"] for record in metrics(run_dir)]


def kill_tree(pid: int) -> None:
    """SIGKILL the launcher and every rank (torchrun starts ranks in sessions of their own)."""
    parent = psutil.Process(pid)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def run_until_then_kill(args: list[str], seen, log: Path, env: dict | None = None) -> str:
    """Start a training run, SIGKILL every process of it once ``seen()`` is true; its stdout."""
    command = [sys.executable, "-m", "megatron_cpt", "train", str(TINY_RECIPE), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 300
        try:
            while not seen():
                assert proc.poll() is None, f"the run ended before the point was caught:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the point was never reached"
                time.sleep(0.005)
            kill_tree(proc.pid)
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
            proc.wait()
    return log.read_text()
