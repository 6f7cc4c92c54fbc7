"""Stopping after step 5 and resuming gives the losses of an uninterrupted run: at the same layout;
at another DP from the default (dp_reshardable) checkpoint; at another TP/PP from one saved with
``checkpoint.reshardable``, the only kind that may change them. Runs killed while they write a
checkpoint, rename it, or update ``latest`` resume from the previous one."""

from __future__ import annotations

import json
import shutil

import pytest

from harness import (layout_comparison_overrides, losses, metrics, run_until_then_kill, train)
from megatron_cpt.checkpointing.dist_io import PAUSE_ENV, is_complete
from token_fixtures import byte_run_overrides

# As in test_parallel_parity, whose TP1-PP2 run is the uninterrupted one here.
TP1_PP2 = ["launch.procs_per_node=2", "parallel.tp=1", "parallel.pp=2"]
TP2_PP1 = ["launch.procs_per_node=2", "parallel.tp=2", "parallel.pp=1"]
DP2 = ["launch.procs_per_node=2", "parallel.tp=1", "parallel.pp=1"]
DP1 = ["launch.procs_per_node=1", "parallel.tp=1", "parallel.pp=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, byte_data, tiny_initial_weights):
    root = tmp_path_factory.mktemp("resume")
    # The uninterrupted run's overrides, with checkpoints (the last overrides win).
    common = layout_comparison_overrides(byte_data, tiny_initial_weights)
    return root, common, common + ["checkpoint.save_at_end=true", "checkpoint.save_interval=10"]


@pytest.fixture(scope="module")
def reference(setup, reference_run) -> list[float]:
    """The losses of the uninterrupted 10 steps at TP1-PP2 (test_parallel_parity's run)."""
    _, uninterrupted, _ = setup
    return losses(reference_run(uninterrupted + TP1_PP2))


def test_resume_matches_uninterrupted_run(setup, reference):
    root, _, common = setup
    split, resharded = root / "split", root / "resharded"
    # The save a layout change resumes from: the optimizer in the fully_reshardable format.
    train(common + TP1_PP2 + [f"logging.run_dir={split}", "train.stop_at_step=5",
                              "checkpoint.reshardable=true"])
    assert (split / "checkpoints" / "latest").read_text().strip() == "step_000005"
    step5 = json.loads((split / "checkpoints" / "step_000005" / "megatron_cpt.json").read_text())
    assert step5["optimizer_format"] == "fully_reshardable"
    shutil.copytree(split, resharded)

    out = train(common + TP1_PP2 + [f"logging.run_dir={split}"])
    assert f"resumed from {split / 'checkpoints' / 'step_000005'} at step 5" in out.stdout
    assert len(reference) == 10
    # Same layout: bitwise.
    assert losses(split) == reference

    # Different layout (TP1-PP2 checkpoint resumed at TP2-PP1): megatron-core reshards model and
    # optimizer state; the arithmetic differs only in reduction order.
    out = train(common + TP2_PP1 + [f"logging.run_dir={resharded}"])
    # It really resumed, from the copied step-5 checkpoint, in the new layout.
    assert f"resumed from {resharded / 'checkpoints' / 'step_000005'} at step 5" in out.stdout
    layout = json.loads((resharded / "layout.json").read_text())
    assert (layout["tp"], layout["pp"]) == (2, 1)
    assert [r["step"] for r in metrics(resharded)] == list(range(1, 11))
    assert losses(resharded)[:5] == reference[:5]  # the steps before the checkpoint were kept
    for step, (a, b) in enumerate(zip(reference[5:], losses(resharded)[5:]), start=6):
        assert abs(a - b) <= 1e-5 * abs(a), f"step {step}: {a} vs {b}"
    assert len(losses(resharded)) == 10


def test_default_checkpoint_resumes_at_another_dp_and_refuses_another_tp(setup, reference):
    """The default save (dp_reshardable, written in parallel by both DP ranks) resumes at DP1 with
    the uninterrupted run's losses; at TP2 it is refused before any rank starts, naming the way
    to a reshardable checkpoint."""
    root, _, common = setup
    run_dir = root / "dp2"
    train(common + DP2 + [f"logging.run_dir={run_dir}", "train.stop_at_step=5"])
    step5 = run_dir / "checkpoints" / "step_000005"
    assert json.loads((step5 / "megatron_cpt.json").read_text())["optimizer_format"] == (
        "dp_reshardable")
    # Fully parallel save: each DP rank wrote its half of the replicated model tensors.
    written = {rank: sum(f.stat().st_size for f in step5.glob(f"__{rank}_*.distcp"))
               for rank in (0, 1)}
    assert min(written.values()) > 0.5 * max(written.values()), written

    refused = train(common + TP2_PP1 + [f"logging.run_dir={run_dir}"], check=False)
    assert refused.returncode == 2
    message = refused.stderr.strip()
    assert message.count("\n") == 0 and "dp_reshardable" in message and "parallel.tp" in message
    assert "checkpoint.reshardable=true" in message and "train.stop_at_step=6" in message

    out = train(common + DP1 + [f"logging.run_dir={run_dir}"])
    assert f"resumed from {step5} at step 5" in out.stdout
    for step, (a, b) in enumerate(zip(reference[5:], losses(run_dir)[5:]), start=6):
        assert abs(a - b) <= 1e-5 * abs(a), f"step {step}: {a} vs {b}"
    assert len(losses(run_dir)) == 10


def test_kills_during_write_rename_and_latest_update_keep_the_previous(setup, byte_data):
    """Three runs are killed while they save step 10: during the shard writes, between the
    finished write and its rename, and between the rename and the update of ``latest``. Each time
    the next run resumes from step 5; the last one finishes."""
    root, _, _ = setup
    run_dir = root / "killed"
    ckpt = run_dir / "checkpoints"
    # A larger model (random weights) makes the shard writes long enough to be caught in the act.
    args = byte_run_overrides(byte_data, steps=10, warmup_steps=2) + [
        "model.preset=llama3-small", "model.vocab_size=8000", "checkpoint.save_interval=5",
        f"logging.run_dir={run_dir}"] + TP1_PP2
    step5, step10 = ckpt / "step_000005", ckpt / "step_000010"
    resumed = f"resumed from {step5} at step 5"

    # 1. During the shard writes: the first sight of step_000010.tmp.
    run_until_then_kill(args, lambda: (ckpt / "step_000010.tmp").exists(), root / "kill1.log")
    assert (ckpt / "latest").read_text().strip() == "step_000005"
    assert not step10.exists()

    # 2. Written completely (shards and megatron_cpt.json), not yet renamed into place.
    out = run_until_then_kill(args, lambda: (ckpt / "paused-at-rename").exists(),
                               root / "kill2.log", {PAUSE_ENV: "rename"})
    assert resumed in out
    # The start found the first kill's partial write, said so and removed it before writing anew.
    assert f"removed {ckpt / 'step_000010.tmp'}: a checkpoint write an earlier start" in out
    assert (ckpt / "step_000010.tmp" / "megatron_cpt.json").is_file() and not step10.exists()
    assert (ckpt / "latest").read_text().strip() == "step_000005"
    (ckpt / "paused-at-rename").unlink()

    # 3. Renamed into place, ``latest`` not yet replaced: latest still names step 5, which is
    # complete, and wins over the newer directory.
    out = run_until_then_kill(args, lambda: (ckpt / "paused-at-latest").exists(),
                               root / "kill3.log", {PAUSE_ENV: "latest"})
    assert resumed in out
    assert is_complete(step10) and not (ckpt / "step_000010.tmp").exists()
    assert (ckpt / "latest").read_text().strip() == "step_000005"
    (ckpt / "paused-at-latest").unlink()

    out = train(args)
    assert resumed in out.stdout
    assert (ckpt / "latest").read_text().strip() == "step_000010"
    assert not list(ckpt.glob("*.tmp"))
    # Steps 6-10 of the killed runs were dropped from metrics.jsonl and run again.
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 11))
