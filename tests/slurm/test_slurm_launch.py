"""`megatron-cpt launch slurm` against a real single-node Slurm: a job runs to completion; a job
warned of its time limit saves, requeues itself, resumes and finishes with the losses of an
uninterrupted run; the generated H100 scripts pass `sbatch --test-only`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from harness import REPO, TINY_RECIPE, losses, metrics, run_cli, train
from token_fixtures import byte_run_overrides, write_byte_dataset

from megatron_cpt.run_files import read_starts

pytestmark = pytest.mark.slurm


def _wait_for(predicate, timeout: float, what: str, cluster=None, job=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    detail = ""
    if cluster is not None and job is not None:
        detail = subprocess.run(["scontrol", "show", "job", job], env=cluster.env,
                                capture_output=True, text=True).stdout
        log = (cluster.root / "slurmctld.log").read_text().splitlines()[-25:]
        detail += "\n--- slurmctld.log\n" + "\n".join(log)
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


@pytest.fixture(scope="module")
def common(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("slurm_data") / "stdlib"
    write_byte_dataset(prefix)
    return byte_run_overrides(prefix, warmup_steps=4) + ["launch.accelerator=cpu",
                                                         "checkpoint.save_interval=0"]


def _submit(overrides: list[str], run_dir: Path, tasks: str = "per-node") -> str:
    out = run_cli(["launch", "slurm", str(TINY_RECIPE), *overrides, f"logging.run_dir={run_dir}",
                   "--partition", "debug", "--time", "00:20:00", "--signal-lead", "120",
                   "--tasks", tasks, "--submit"])
    assert str(run_dir / "job.sbatch") in out.stdout.splitlines()
    return out.stdout.split("submitted job ")[1].split()[0]


@pytest.mark.parametrize("tasks", ["per-node", "per-gpu"])
def test_job_runs_to_completion(slurm, common, tmp_path, tasks):
    run_dir = tmp_path / "run"
    job = _submit(common + ["train.steps=6"], run_dir, tasks)
    _wait_for(lambda: slurm.job_field(job, "JobState") == "COMPLETED", 300, "job completion",
              slurm, job)
    assert slurm.job_field(job, "ExitCode") == "0:0"
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 7))
    (start,) = read_starts(run_dir)
    assert (start.job_id, start.first_step, start.last_step, start.ended) == (job, 1, 6, "finished")


def test_warning_signal_saves_requeues_and_resumes(slurm, common, tmp_path):
    steps = 20
    overrides = common + [f"train.steps={steps}"]
    reference = tmp_path / "reference"
    train(overrides + [f"logging.run_dir={reference}"])

    run_dir = tmp_path / "preempted"
    job = _submit(overrides, run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 5,
              300, "5 trained steps", slurm, job)
    # What Slurm sends `--signal=B:USR1@lead` seconds before the time limit.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm.env, check=True)
    _wait_for(lambda: slurm.job_field(job, "Restarts") == "1", 300, "the requeue", slurm, job)
    # A requeued job becomes eligible only after a delay (about 2 minutes); let it start now, but
    # only once the node has finished the first start and a few seconds have passed: slurmd
    # refuses a job credential issued in the same second as the revocation of the previous one
    # ("Job credential revoked"), which the delay normally prevents.
    _wait_for(lambda: slurm.job_field(job, "JobState") == "PENDING"
              and slurm.scontrol_state().startswith("idle"), 300, "the node to be idle", slurm, job)
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=slurm.env,
                   check=True)
    _wait_for(lambda: slurm.job_field(job, "JobState") == "COMPLETED", 300, "job completion",
              slurm, job)

    first, second = read_starts(run_dir)
    assert (first.restart_count, first.ended, first.first_step) == (0, "preempted", 1)
    assert 5 <= first.last_step < steps
    assert first.checkpoint.endswith(f"step_{first.last_step:06d}")
    assert (second.restart_count, second.ended) == (1, "finished")
    assert (second.first_step, second.last_step) == (first.last_step + 1, steps)
    # Every step trained exactly once, with the losses of the uninterrupted run, bitwise.
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, steps + 1))
    assert losses(run_dir) == losses(reference)
    log = "".join(p.read_text() for p in run_dir.glob("slurm-*.out"))
    assert "megatron-cpt: requeue: start 1 stopped (preempted)" in log
    assert "megatron-cpt: no requeue: start 2 ended 'finished'" in log


def test_generated_scripts_pass_test_only(slurm):
    # The 8B script (1 node x 8 GPUs) fits the test node, which declares 8 GPUs. The 70B
    # script needs 8 nodes, which a one-node cluster cannot express (shellcheck covers it).
    script = REPO / "launch" / "llama3_8b_cpt_8xh100_fp8.sbatch"
    proc = subprocess.run(["sbatch", "--test-only", "--partition=debug", str(script)],
                          env=slurm.env, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr
