"""`megatron-cpt almr sweep --slurm`: the job array passes `sbatch --test-only`, and a 2-point
sweep (plus its pre-CPT reference) runs as one array on the single-node cluster; every task
completes and `almr status` finds every run finished."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from harness import TINY_RECIPE, metrics, run_cli  # noqa: E402
from mixture_fixtures import mixture_overrides, write_two_language_mixture  # noqa: E402

pytestmark = pytest.mark.slurm


def _array_states(cluster, job: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", job], env=cluster.env, capture_output=True,
                         text=True, timeout=60).stdout
    return [word.split("=", 1)[1] for word in out.split() if word.startswith("JobState=")]


def _queued(cluster, job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job], env=cluster.env, capture_output=True,
                         text=True, timeout=60).stdout
    return bool(out.strip())


def test_two_point_sweep_runs_as_one_job_array(slurm, tmp_path, tiny_initial_weights):
    mixture = write_two_language_mixture(tmp_path)
    common = ["model.dtype=fp32", "launch.procs_per_node=1", "launch.accelerator=cpu",
              "parallel.tp=1", "parallel.pp=1", "train.global_batch_size=4",
              "train.micro_batch_size=2", "train.seq_length=64", "train.eval_interval=4",
              "train.eval_steps=2", "data.split=80,20,0", "optim.schedule.warmup_steps=1",
              "logging.tensorboard=false"]
    overrides = mixture_overrides(mixture, common)
    init = tiny_initial_weights  # the tiny recipe's model in fp32, as here
    sweep = tmp_path / "sweep"
    out = run_cli(["almr", "sweep", str(TINY_RECIPE), *overrides, f"checkpoint.pretrained={init}",
                   "--almr", "0.2,0.6", "--lr", "1e-3", "--tokens", str(4 * 4 * 64),
                   "--out", str(sweep), "--slurm", "--partition", "debug", "--time", "00:20:00",
                   "--signal-lead", "120", "--submit"])
    script = sweep / "sweep.sbatch"
    assert "#SBATCH --array=0-2\n" in script.read_text()
    test_only = subprocess.run(["sbatch", "--test-only", str(script)], env=slurm.env,
                               capture_output=True, text=True, timeout=60)
    assert test_only.returncode == 0 and "to start at" in test_only.stderr, test_only.stderr

    job = next(word.split("_")[0] for word in out.stdout.split() if word[:1].isdigit() and "_" in word)
    deadline = time.monotonic() + 600
    while _queued(slurm, job):
        assert time.monotonic() < deadline, subprocess.run(
            ["scontrol", "show", "job", job], env=slurm.env, capture_output=True, text=True,
            timeout=60).stdout
        time.sleep(1)
    assert _array_states(slurm, job) == ["COMPLETED"] * 3

    status = run_cli(["almr", "status", str(sweep)])
    assert status.stdout.strip().splitlines()[-1] == "done 3 (of 3)", status.stdout
    for run in ("almr0.2_lr0.001", "almr0.6_lr0.001"):
        final = metrics(sweep / run)[-1]
        assert final["step"] == 4 and isinstance(final["val_loss_by_language/zh"], float)
    assert metrics(sweep / "reference")[0]["step"] == 0
