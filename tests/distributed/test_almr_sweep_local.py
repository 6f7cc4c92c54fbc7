"""`run_sweep` with the local launcher: the pre-CPT reference evaluates the initial weights, a
point trains, and after an interruption (metrics past the last checkpoint, the final checkpoint
gone) a rerun skips the finished reference and resumes the point from its checkpoint to the same
final validation losses, bit for bit."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from harness import TINY_RECIPE, metrics  # noqa: E402
from mixture_fixtures import mixture_overrides, write_two_language_mixture  # noqa: E402

from megatron_cpt.almr.launchers import LocalLauncher  # noqa: E402
from megatron_cpt.almr.sweep import plan_runs, run_state, run_sweep  # noqa: E402
from megatron_cpt.config.loader import apply_overrides, read_yaml  # noqa: E402


def test_local_sweep_runs_the_reference_and_resumes_an_interrupted_point(tmp_path,
                                                                        tiny_initial_weights):
    mixture = write_two_language_mixture(tmp_path)
    common = ["model.dtype=fp32", "launch.procs_per_node=1", "parallel.tp=1", "parallel.pp=1",
              "train.global_batch_size=4", "train.micro_batch_size=2", "train.seq_length=64",
              "train.eval_interval=4", "train.eval_steps=2", "data.split=80,20,0",
              "optim.schedule.warmup_steps=1", "logging.tensorboard=false"]
    init = tiny_initial_weights  # the tiny recipe's model in fp32, as here
    base = apply_overrides(read_yaml(TINY_RECIPE), mixture_overrides(mixture, common + [
        "checkpoint.save_interval=2", f"checkpoint.pretrained={init}"]))
    plan = plan_runs(base, [0.5], [1e-3], str(tmp_path / "sweep"), tokens=4 * 4 * 64)
    reference, point = plan.runs
    assert plan.steps == 4

    results = run_sweep(plan, LocalLauncher(progress=False))
    assert [(r.run, r.status) for r in results] == [("reference", "finished"),
                                                    ("almr0.5_lr0.001", "finished")]
    ref_dir, run_dir = plan.run_dir(reference), plan.run_dir(point)
    assert f"initial weights from {init}" in (ref_dir / "run.log").read_text()
    [ref_record] = metrics(ref_dir)
    assert ref_record["step"] == 0 and len(ref_record["val_batch_loss_by_language/zh"]) == 2
    final = metrics(run_dir)[-1]
    assert final["step"] == 4 and isinstance(final["val_loss_by_language/en"], float)

    # Interrupted after step 3: the step-4 checkpoint never written, metrics up to step 3.
    checkpoints = run_dir / "checkpoints"
    shutil.rmtree(checkpoints / "step_000004")
    (checkpoints / "latest").write_text("step_000002\n")
    kept = [json.dumps(r) for r in metrics(run_dir) if r["step"] <= 3]
    (run_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    assert run_state(run_dir, plan.steps).status == "partial"

    again = run_sweep(plan, LocalLauncher(progress=False))
    assert [(r.run, r.status) for r in again] == [("reference", "skipped"),
                                                  ("almr0.5_lr0.001", "finished")]
    assert "resumed from" in (run_dir / "run.log").read_text()
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3, 4]
    resumed = metrics(run_dir)[-1]
    losses = [k for k in final if k == "loss" or k.startswith(("val_loss", "val_batch_loss"))]
    assert len(losses) == 1 + 1 + 2 + 2 * 2  # loss, val_loss, per source, per language (+ batches)
    assert {k: resumed[k] for k in losses} == {k: final[k] for k in losses}
