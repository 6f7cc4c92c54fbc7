"""`megatron-cpt launch slurm` against a real single-node Slurm, with interval checkpoints on as in
the H100 recipes: jobs run to completion (the CPU demo recipe asks for no GPU); a job warned of its
time limit again and again saves, requeues itself and finishes with the losses of an uninterrupted
run, with blocking and background checkpoint writes; a start killed after an interval save is
requeued and resumes from it; a job whose starts fail at once stops requeueing; the generated H100
scripts pass `sbatch --test-only`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import REPO, TINY_RECIPE, losses, metrics, run_cli
from token_fixtures import byte_run_overrides, write_byte_dataset

from megatron_cpt.config.recipe import load_recipe
from megatron_cpt.run_files import read_requeue_decisions, read_starts

pytestmark = pytest.mark.slurm
DEMO_RECIPE = REPO / "examples" / "demo_llama3_tiny_cpt_2xcpu.yaml"


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
                                capture_output=True, text=True, timeout=60).stdout
        log = (cluster.root / "slurmctld.log").read_text().splitlines()[-25:]
        detail += "\n--- slurmctld.log\n" + "\n".join(log)
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


STEPS = 60  # long enough that a start is warned after an interval save and before it finishes


@pytest.fixture(scope="module")
def common(byte_data):
    # Interval checkpoints on, as in every H100 recipe.
    return byte_run_overrides(byte_data, warmup_steps=4) + ["launch.accelerator=cpu",
                                                            "checkpoint.save_interval=5"]


@pytest.fixture(scope="module")
def reference(common, reference_run):
    """Losses of the uninterrupted run that the interrupted jobs must reproduce, bitwise, trained
    without checkpoints (they leave the arithmetic alone)."""
    return losses(reference_run(common + [f"train.steps={STEPS}", "checkpoint.save_interval=0",
                                          "checkpoint.save_at_end=false"]))


def _write_script(recipe: Path, overrides: list[str], run_dir: Path, tasks: str = "per-node",
                  cwd: Path | None = None, submit: bool = False) -> tuple[Path, str | None]:
    out = run_cli(["launch", "slurm", str(recipe), *overrides, f"logging.run_dir={run_dir}",
                   "--partition", "debug", "--time", "00:20:00", "--signal-lead", "120",
                   "--tasks", tasks, *(["--submit"] if submit else [])], cwd=cwd)
    script = run_dir / "job.sbatch"
    assert str(script) in out.stdout.splitlines()
    return script, out.stdout.split("submitted job ")[1].split()[0] if submit else None


def _sbatch(slurm, script: Path, *options: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *options, str(script)], env=slurm.env,
                          capture_output=True, text=True, check=True, timeout=60)
    return proc.stdout.strip().split(";")[0]


def _run_until_done(slurm, job: str, timeout: float = 600, until_restarts: int | None = None) -> int:
    """Wait for the job to end (or, with ``until_restarts``, for that start to run), starting each
    requeued start at once; returns its restarts.

    A requeued job becomes eligible only after a delay (about 2 minutes): let it start now, but
    only once the node has finished the previous start and a few seconds have passed, since slurmd
    refuses a job credential issued in the same second as the revocation of the previous one
    ("Job credential revoked"), which the delay normally prevents."""
    deadline = time.monotonic() + timeout
    released = 0
    while True:
        state, restarts = slurm.job_field(job, "JobState"), int(slurm.job_field(job, "Restarts") or 0)
        if state in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL"):
            return restarts
        if until_restarts is not None and state == "RUNNING" and restarts >= until_restarts:
            return restarts
        if state == "PENDING" and restarts > released and slurm.scontrol_state().startswith("idle"):
            time.sleep(3)
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=slurm.env,
                           check=True, timeout=60)
            released = restarts
        if time.monotonic() > deadline:
            _wait_for(lambda: False, 0, f"job {job} to end", slurm, job)
        time.sleep(0.5)


def _job_log(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted(run_dir.glob("slurm-*.out")))


def _assert_every_step_once_bitwise(run_dir: Path, reference: list[float]) -> None:
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, STEPS + 1))
    assert losses(run_dir) == reference


def test_job_runs_to_completion(slurm, common, tmp_path):
    run_dir = tmp_path / "run"
    _, job = _write_script(TINY_RECIPE, common + ["train.steps=6"], run_dir, submit=True)
    _wait_for(lambda: slurm.job_field(job, "JobState") == "COMPLETED", 300, "job completion",
              slurm, job)
    assert slurm.job_field(job, "ExitCode") == "0:0"
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 7))
    (start,) = read_starts(run_dir)
    assert (start.job_id, start.first_step, start.last_step, start.ended) == (job, 1, 6, "finished")


def test_demo_recipe_runs_one_task_per_rank_without_gpus(slurm, byte_data, tmp_path):
    # The demo recipe as written (launch.accelerator: cpu), its data at the paths it names.
    recipe = load_recipe(DEMO_RECIPE)
    for source in recipe.data.mixture.sources:
        target = tmp_path / source.prefix
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".bin", ".idx"):
            target.with_name(target.name + suffix).symlink_to(f"{byte_data}{suffix}")
    run_dir = tmp_path / "outputs" / "demo" / "run"
    script, job = _write_script(DEMO_RECIPE, ["train.steps=3", "optim.schedule.warmup_steps=1",
                                              "train.eval_interval=0",
                                              "data.eod_token_id=0", "logging.tensorboard=false"],
                                run_dir, tasks="per-gpu", cwd=tmp_path, submit=True)
    assert "--gpus" not in script.read_text()
    assert "gpu" not in slurm.job_field(job, "TresPerNode")
    _wait_for(lambda: slurm.job_field(job, "JobState") == "COMPLETED", 300, "job completion",
              slurm, job)
    (start,) = read_starts(run_dir)
    assert (start.job_id, start.last_step, start.ended) == (job, 3, "finished")


def _warn_after_interval_save(slurm, job: str, run_dir: Path, start: int) -> None:
    """Once start ``start`` has written an interval checkpoint, send what Slurm sends at the time
    limit's warning (``--signal=B:USR1@lead``): USR1 to the batch shell.

    Slurm itself sends it at its periodic time-limit check (every 30 s on the test cluster), so
    a job with a real one-minute ``--time`` is warned at a random point of each start, often
    before training began; its chain of starts took 12 minutes once. The signal is the same."""
    def saved_in_this_start():
        starts = read_starts(run_dir)
        if len(starts) < start or not (run_dir / "metrics.jsonl").is_file():
            return False
        first = starts[start - 1].first_step
        return any(r["step"] >= first and r.get("checkpoint_save_s") is not None
                   for r in metrics(run_dir))

    _wait_for(saved_in_this_start, 300, f"an interval save in start {start}", slurm, job)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm.env, check=True,
                   timeout=60)
    _wait_for(lambda: int(slurm.job_field(job, "Restarts") or 0) >= start, 300,
              f"the requeue of start {start}", slurm, job)


@pytest.mark.parametrize("async_save", [False, True])
def test_time_limit_warnings_requeue_until_finished(slurm, common, reference, tmp_path,
                                                    async_save):
    run_dir = tmp_path / "run"
    async_option = f"checkpoint.async_save={str(async_save).lower()}"
    _, job = _write_script(TINY_RECIPE, common + [f"train.steps={STEPS}", async_option], run_dir,
                           submit=True)
    for start in (1, 2):  # two warnings, each after an interval save of the same start
        _warn_after_interval_save(slurm, job, run_dir, start)
        _run_until_done(slurm, job, until_restarts=start)
    assert _run_until_done(slurm, job) == 2
    assert slurm.job_field(job, "JobState") == "COMPLETED"
    starts = read_starts(run_dir)
    assert [s.ended for s in starts] == ["preempted", "preempted", "finished"]
    for before, after in zip(starts, starts[1:]):
        assert after.first_step == before.last_step + 1  # resumed from the stop save
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    _assert_every_step_once_bitwise(run_dir, reference)
    log = _job_log(run_dir)
    assert "megatron-cpt: requeue: start 1 stopped (preempted)" in log
    assert "megatron-cpt: requeue: start 2 stopped (preempted)" in log
    assert "megatron-cpt: no requeue: start 3 ended 'finished'" in log


def _kill_training_step(slurm, job: str) -> None:
    listed = subprocess.run(["scontrol", "listpids", job], env=slurm.env, capture_output=True,
                            text=True, check=True, timeout=60).stdout.splitlines()[1:]
    pids = [int(row.split()[0]) for row in listed if row.split()[2].isdigit()]  # not batch/extern
    assert pids, listed
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_killed_start_after_an_interval_save_is_requeued(slurm, common, reference, tmp_path):
    run_dir = tmp_path / "run"
    _, job = _write_script(TINY_RECIPE, common + [f"train.steps={STEPS}"], run_dir, submit=True)
    ckpt = run_dir / "checkpoints"
    _wait_for(lambda: (ckpt / "latest").is_file(), 300, "an interval checkpoint", slurm, job)
    # Every process of the training step (torchrun and the ranks) at once, as a node's OOM killer
    # or a NCCL abort would end them. (`scancel --signal=KILL` cancels the whole job instead.)
    _kill_training_step(slurm, job)
    assert _run_until_done(slurm, job) == 1
    assert slurm.job_field(job, "JobState") == "COMPLETED"
    first, second = read_starts(run_dir)
    assert first.ended is None  # killed: no end record
    assert second.first_step > 1 and (second.first_step - 1) % 5 == 0  # from an interval save
    _assert_every_step_once_bitwise(run_dir, reference)
    crash, finish = read_requeue_decisions(run_dir)
    assert (crash.requeue, crash.progress) == (True, True)
    assert crash.checkpoint_step == second.first_step - 1
    assert "start 1 ended without a record (killed or crashed)" in crash.reason
    assert "megatron-cpt: requeue: start 1 ended without a record" in _job_log(run_dir)
    assert not finish.requeue


def test_start_that_fails_at_once_stops_requeueing(slurm, common, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_byte_dataset(data / "stdlib")
    run_dir = tmp_path / "run"
    overrides = common + [f"data.paths=[{data / 'stdlib'}]", "train.steps=20"]
    script, _ = _write_script(TINY_RECIPE, overrides, run_dir)
    (data / "stdlib.bin").unlink()  # removed after the script was written and checked
    job = _sbatch(slurm, script)
    assert _run_until_done(slurm, job) == 2
    assert slurm.job_field(job, "JobState") == "FAILED"
    decisions = read_requeue_decisions(run_dir)
    assert [(d.requeue, d.progress) for d in decisions] == [(True, False), (True, False),
                                                            (False, False)]
    log = _job_log(run_dir)
    (line,) = [line for line in log.splitlines() if line.startswith("megatron-cpt: no requeue")]
    assert "3 starts in a row without a new checkpoint" in line
    assert "launch.max_starts_without_progress=3" in line


def test_generated_scripts_pass_test_only(slurm):
    # The 8B script (1 node x 8 GPUs) fits the test node, which declares 8 GPUs. The 70B
    # script needs 8 nodes, which a one-node cluster cannot express (shellcheck covers it).
    script = REPO / "launch" / "llama3_8b_cpt_8xh100_fp8.sbatch"
    proc = subprocess.run(["sbatch", "--test-only", "--partition=debug", str(script)],
                          env=slurm.env, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr
