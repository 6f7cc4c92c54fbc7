"""`megatron-cpt train` on the tiny recipe: 2 CPU ranks, loss goes down, every artefact written;
and the non-finite-loss policy stops (or skips, then stops) a diverging run."""

from __future__ import annotations

import pytest

from harness import TINY_RECIPE, metrics, run_cli, train
from token_fixtures import EOD_ID


def test_tiny_recipe_trains_on_two_ranks(byte_data, tmp_path):
    run_dir = tmp_path / "run"
    out = train([f"data.paths=[{byte_data}]", f"data.eod_token_id={EOD_ID}",
                 f"logging.run_dir={run_dir}"])
    assert "finished: step 20" in out.stdout
    # TP2 with sequence parallelism: the ranks got CUDA_DEVICE_MAX_CONNECTIONS=1, as in a Slurm
    # job, so megatron-core (whose warning is no longer hidden) does not ask for it.
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in out.stderr
    records = metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 21))
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "step_time_s"):
        assert all(r[key] is not None for r in records), key
    assert records[0]["tokens"] == 8 * 128  # global batch x sequence length, all tokens count
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-3:]) / 3
    assert last < first - 1.0, (first, last)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_000020"
    assert (ckpt / "step_000010" / "megatron_cpt.json").is_file()
    assert (run_dir / "recipe.resolved.json").is_file()

    # The trained checkpoint (model + optimizer + scheduler state) exports to Hugging Face, and
    # transformers' model computes our logits from it.
    hf_dir = tmp_path / "hf"
    run_cli(["convert", "mcore-to-hf", "--ckpt-dir", str(ckpt / "step_000020"), "--out-dir", str(hf_dir)])
    verified = run_cli(["convert", "verify", "--hf-dir", str(hf_dir), "--ckpt-dir",
                        str(ckpt / "step_000020"), "--tp", "2"])
    diff = float(verified.stdout.split("max_abs_diff=")[1].split()[0])
    assert diff < 1e-4, verified.stdout


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_policy(byte_data, tmp_path, policy):
    run_dir = tmp_path / policy
    # An absurd learning rate makes the weights overflow after the first update.
    proc = run_cli(["train", str(TINY_RECIPE), f"data.paths=[{byte_data}]",
                    f"data.eod_token_id={EOD_ID}", f"logging.run_dir={run_dir}",
                    "optim.lr=1e30", "optim.min_lr=1e30", "optim.clip_grad=0",
                    "optim.schedule.warmup_steps=0", "optim.schedule.decay_style=constant",
                    "train.steps=8", f"train.nonfinite_loss={policy}", "train.max_skipped_steps=2",
                    "checkpoint.save_at_end=false", "logging.tensorboard=false"], check=False)
    assert proc.returncode != 0
    assert "non-finite loss" in proc.stderr
    records = metrics(run_dir)
    skipped = [r for r in records if r.get("skipped")]
    assert skipped and skipped[0]["loss"] is None
    if policy == "stop":
        assert len(skipped) == 1 and records[-1] is skipped[0]
    else:
        assert len(skipped) == 3  # two tolerated, the third stops the run
