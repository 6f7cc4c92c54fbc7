"""A checkpoint file system that fills up or turns read-only under a running job: each failure ends
the command with one last line naming it, without a traceback; `latest` only ever names a whole
checkpoint; the next start removes the partial write and resumes, and the steps end up trained
once each, with the losses of an uninterrupted run.

The checkpoint directory is a small tmpfs mounted by the test (root only), resized and remounted
between starts; one checkpoint of this run takes about 4.2 MB:

1. 2 MB: the first save fails inside the writer (exit 4, "no space left on device");
2. 6 MB: the start removes that partial write, saves step 2, and stops before step 4's save, which
   would not fit (exit 75, "no room for the next checkpoint");
3. 64 MB, read-only: resumes from step 2; step 4's save fails (exit 4, "read-only file system");
4. writable again: resumes from step 2 and finishes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import losses, metrics
from token_fixtures import byte_run_overrides

from megatron_cpt.checkpointing.run_checkpoints import find_resume_checkpoint
from megatron_cpt.launch.failures import EXIT_FAILED
from megatron_cpt.run_files import read_starts
from megatron_cpt.train.preemption import EXIT_RESUMABLE

STEPS = 8


def _mount(target, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True,
                   capture_output=True, timeout=60)


def _remount(target, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True,
                   capture_output=True, timeout=60)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting the test's tmpfs needs root")
    target = tmp_path / "ckpt_fs"
    target.mkdir()
    _mount(target, "size=2m")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=60)


def _start(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megatron_cpt", "train", *args],
                          capture_output=True, text=True, timeout=600)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return lines[-1]


def test_full_and_read_only_checkpoint_disk(small_disk, tmp_path, byte_data, reference_run):
    from harness import TINY_RECIPE

    overrides = [*byte_run_overrides(byte_data, steps=STEPS), "model.vocab_size=257"]
    # Checkpoints leave the arithmetic alone: the uninterrupted run needs none.
    reference = reference_run(overrides + ["checkpoint.save_interval=0",
                                           "checkpoint.save_at_end=false"])
    args = [str(TINY_RECIPE), *overrides, "checkpoint.save_interval=2", "checkpoint.keep_last=0"]

    ckpt = small_disk / "checkpoints"
    run_dir = tmp_path / "run"
    args += [f"checkpoint.dir={ckpt}", f"logging.run_dir={run_dir}"]

    full = _start(args)
    assert full.returncode == EXIT_FAILED, full.stderr[-4000:]
    line = _last_line(full)
    assert line.startswith("megatron-cpt train: error: rank ") and "no space left on device" in line
    assert str(ckpt / "step_000002.tmp") in line
    assert find_resume_checkpoint(ckpt) is None and not (ckpt / "latest").exists()

    _remount(small_disk, "size=6m")
    no_room = _start(args)
    assert no_room.returncode == EXIT_RESUMABLE, no_room.stderr[-4000:]
    assert f"removed {ckpt / 'step_000002.tmp'}" in no_room.stdout
    line = _last_line(no_room)
    assert line.startswith("megatron-cpt train: stopped: no room for the next checkpoint in")
    assert (ckpt / "latest").read_text().strip() == "step_000002"
    assert read_starts(run_dir)[-1].ended == "no_space"

    _remount(small_disk, "size=64m,ro")
    read_only = _start(args)
    assert read_only.returncode == EXIT_FAILED, read_only.stderr[-4000:]
    line = _last_line(read_only)
    assert "read-only file system" in line and str(ckpt) in line
    assert (ckpt / "latest").read_text().strip() == "step_000002"

    _remount(small_disk, "rw")
    done = _start(args)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resumed from" in done.stdout and "step_000002 at step 2" in done.stdout
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, STEPS + 1))
    assert losses(run_dir) == losses(reference)
