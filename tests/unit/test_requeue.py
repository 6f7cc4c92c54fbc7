"""The Slurm job's requeue decision, once per start: after a clean stop (taken inside the training
step) and after a start that was killed or crashed (taken by the batch script from the checkpoints
the run left), with the limit on starts in a row without progress."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from megatron_cpt.launch.requeue import (decide_after_failure, decide_after_stop,
                                         request_requeue_if_due)
from megatron_cpt.run_files import (read_requeue_decisions, record_end,
                                    record_requeue_decision, record_start)

FINAL = 40


def _starts(tmp_path, *ends):
    for first, last, ended in ends:
        record_start(tmp_path, first - 1, FINAL)
        if ended is not None:
            record_end(tmp_path, last, ended, f"ckpt/step_{last:06d}")
    return decide_after_stop(str(tmp_path))


@pytest.mark.parametrize("ends,expected", [
    ([(1, 12, "preempted")], True),
    ([(1, 12, "preempted"), (13, 20, "time_limit")], True),
    ([(1, 12, "preempted"), (13, 12, "preempted")], False),  # no step since the last start
    ([(1, 12, "preempted"), (1, 12, "preempted")], False),  # did not resume: would loop forever
    ([(1, 12, "preempted"), (13, None, None), (13, 12, "preempted")], False),
    ([(1, 40, "preempted")], False),  # the final step: nothing left to do
    ([(1, 40, "finished")], False),
    ([(1, 7, "failed")], False),
    ([(1, 7, "nonfinite")], False),
    ([(1, None, None)], False),  # killed: no end line
    ([], False),
])
def test_decision_after_a_clean_stop(tmp_path, ends, expected):
    requeue, reason = _starts(tmp_path, *ends)
    assert requeue is expected, reason


def test_request_and_record_are_written_only_when_due(tmp_path, capsys):
    _starts(tmp_path, (1, 12, "preempted"))
    assert request_requeue_if_due(tmp_path)
    assert "after step 12" in (tmp_path / "requeue.request").read_text()
    (tmp_path / "requeue.request").unlink()
    record_start(tmp_path, 12, FINAL)
    record_end(tmp_path, FINAL, "finished", "ckpt/step_000040")
    assert not request_requeue_if_due(tmp_path)
    assert not (tmp_path / "requeue.request").exists()
    assert "no requeue: start 2 ended 'finished'" in capsys.readouterr().out
    first, second = read_requeue_decisions(tmp_path)
    assert (first.requeue, first.progress, first.checkpoint_step) == (True, True, 12)
    assert (second.requeue, second.progress, second.checkpoint_step) == (False, True, FINAL)


class Job:
    """Starts of one Slurm job in a run directory, with the checkpoints they leave."""

    def __init__(self, run_dir, monkeypatch, limit=3):
        self.run_dir, self.ckpt, self.limit = run_dir, run_dir / "checkpoints", limit
        self.monkeypatch, self.restarts = monkeypatch, -1
        monkeypatch.setenv("SLURM_JOB_ID", "77")

    def save(self, step):
        path = self.ckpt / f"step_{step:06d}"
        path.mkdir(parents=True)
        (path / "megatron_cpt.json").write_text("{}")
        (path / "metadata.json").write_text("{}")
        (self.ckpt / "latest").write_text(path.name + "\n")

    def start(self, resumed_step=None):
        """A new start; it records itself only when it gets as far as training."""
        self.restarts += 1
        self.monkeypatch.setenv("SLURM_RESTART_COUNT", str(self.restarts))
        if resumed_step is not None:
            record_start(self.run_dir, resumed_step, FINAL)

    def crash(self):
        decision = decide_after_failure(self.run_dir, self.ckpt, FINAL, self.limit,
                                        self.restarts, "77")
        record_requeue_decision(self.run_dir, decision)
        return decision


def test_a_crash_after_a_newer_checkpoint_is_requeued(tmp_path, monkeypatch):
    job = Job(tmp_path, monkeypatch)
    job.start(resumed_step=0)
    job.save(5)
    job.save(10)
    decision = job.crash()
    assert (decision.requeue, decision.progress, decision.checkpoint_step) == (True, True, 10)
    assert "start 1 ended without a record (killed or crashed)" in decision.reason
    assert "step_000010" in decision.reason
    # The next start resumes from step 10 and crashes again after saving step 15.
    job.start(resumed_step=10)
    job.save(15)
    assert job.crash().requeue
    # One that crashes before saving anything new is retried, as a start without progress.
    job.start(resumed_step=15)
    decision = job.crash()
    assert (decision.requeue, decision.progress) == (True, False)
    assert "1 in a row of launch.max_starts_without_progress=3" in decision.reason


def test_starts_without_progress_stop_at_the_limit(tmp_path, monkeypatch):
    job = Job(tmp_path, monkeypatch)
    job.start(resumed_step=0)
    job.save(4)
    assert job.crash().progress
    verdicts = []
    for _ in range(3):  # e.g. a data file removed after submission: each start dies at once
        job.start()
        verdicts.append(job.crash())
    assert [d.requeue for d in verdicts] == [True, True, False]
    assert all("ended before training began" in d.reason for d in verdicts)
    assert "3 starts in a row without a new checkpoint" in verdicts[-1].reason
    assert "launch.max_starts_without_progress=3" in verdicts[-1].reason


def test_progress_resets_the_count(tmp_path, monkeypatch):
    job = Job(tmp_path, monkeypatch, limit=2)
    job.start(resumed_step=0)
    assert job.crash().requeue  # 1 of 2 without progress
    job.start(resumed_step=0)
    job.save(3)
    assert job.crash().progress
    job.start(resumed_step=3)
    assert job.crash().requeue  # again 1 of 2
    job.start(resumed_step=3)
    assert not job.crash().requeue


def test_no_progress_without_resuming(tmp_path, monkeypatch):
    # checkpoint.resume: false: each start begins at step 1 and saves step 5 again, which an
    # earlier start had passed; that is not progress.
    job = Job(tmp_path, monkeypatch, limit=2)
    job.start(resumed_step=0)
    job.save(8)
    record_end(tmp_path, 8, "failed", None)
    assert job.crash().progress
    job.start(resumed_step=0)
    (job.ckpt / "step_000008").rename(job.ckpt / "old")
    job.save(5)
    assert not job.crash().progress


def test_final_checkpoint_and_clean_endings_are_not_requeued(tmp_path, monkeypatch):
    job = Job(tmp_path, monkeypatch)
    job.start(resumed_step=30)
    job.save(FINAL)
    decision = job.crash()
    assert not decision.requeue and "is the final step" in decision.reason
    other = Job(tmp_path / "nonfinite", monkeypatch)
    other.start(resumed_step=0)
    record_end(other.run_dir, 7, "nonfinite", None)
    decision = other.crash()
    assert not decision.requeue and "ended 'nonfinite'" in decision.reason


def test_module_decides_once_per_start(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    recipe = tmp_path / "job.recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"preset": "llama3-tiny"},
                                      "train": {"steps": FINAL}, "data": {"paths": ["absent"]},
                                      "launch": {"max_starts_without_progress": 2},
                                      "logging": {"run_dir": str(run_dir)}}))
    job = Job(run_dir, monkeypatch)
    job.start(resumed_step=0)
    job.save(6)

    def decide():
        return subprocess.run([sys.executable, "-m", "megatron_cpt.launch.requeue", str(recipe)],
                              capture_output=True, text=True, timeout=120)

    proc = decide()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("megatron-cpt: requeue: start 1 ended without a record")
    assert (run_dir / "requeue.request").is_file()
    # A second call for the same start (the training step or the script already decided) is quiet.
    (run_dir / "requeue.request").unlink()
    proc = decide()
    assert (proc.returncode, proc.stdout) == (0, "")
    assert not (run_dir / "requeue.request").exists()
    assert len(read_requeue_decisions(run_dir)) == 1
