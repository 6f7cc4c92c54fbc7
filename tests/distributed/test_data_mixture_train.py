"""A mixture feeds `megatron-cpt train`: validation loss per source and per language reaches
metrics.jsonl and TensorBoard, and a run stopped after step 3 and resumed trains on exactly the
global batches that the data order prescribes (each step's batch digest equals the digest of
samples consumed..consumed+gbs of a dataset rebuilt in this process; no batch twice)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from harness import TINY_RECIPE, metrics, train  # noqa: E402
from mixture_fixtures import mixture_overrides, write_source  # noqa: E402

STEPS, GBS = 6, 4


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("mixture_train")
    for seed, name in enumerate(("zh_a", "zh_b", "en_a", "code_a")):
        write_source(root / name, 30_000 if name != "zh_b" else 8_000, seed)
    mixture = {"almr": 0.33, "remainder": {"en": 0.75, "code": 0.25}, "sources": [
        {"name": "zh_a", "prefix": str(root / "zh_a"), "language": "zh"},
        {"name": "zh_b", "prefix": str(root / "zh_b"), "language": "zh"},
        {"name": "en_a", "prefix": str(root / "en_a"), "language": "en"},
        {"name": "code_a", "prefix": str(root / "code_a"), "language": "code"}]}
    return mixture_overrides(mixture, [
        "model.dtype=fp32", "launch.procs_per_node=2", "parallel.tp=1", "parallel.pp=1",
        f"train.steps={STEPS}", f"train.global_batch_size={GBS}", "train.micro_batch_size=1",
        "train.seq_length=64", "train.eval_interval=3", "train.eval_steps=1",
        "data.split=80,20,0", "optim.schedule.warmup_steps=1", "checkpoint.save_interval=0",
        f"logging.run_dir={root / 'run'}"])


def _reference_digests(overrides: list[str]) -> list[str]:
    """The data order computed here, independently of the trainer's bookkeeping."""
    import tempfile

    from megatron_cpt.config import load_recipe
    from megatron_cpt.data.datasets import build_training_data, global_batch_digest
    from megatron_cpt.data.inspect_mix import single_process_group

    recipe = load_recipe(TINY_RECIPE, overrides)
    with tempfile.TemporaryDirectory() as scratch, single_process_group(scratch):
        data = build_training_data(recipe.data, recipe.train, recipe.model.vocab_size,
                                   STEPS * GBS, 0, cache_dir=f"{scratch}/cache")
        return [global_batch_digest(data.train, step * GBS, GBS) for step in range(STEPS)]


def test_stop_resume_follows_the_data_order_with_per_source_validation(overrides):
    first = train(overrides + ["train.stop_at_step=3"])
    assert "mixture:" in first.stdout and "language zh" in first.stdout
    second = train(overrides)
    assert "at step 3" in second.stdout
    run_dir = Path(overrides[-1].split("=", 1)[1])
    records = metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["consumed_samples"] for r in records] == [GBS * s for s in range(1, STEPS + 1)]
    digests = [r["batch_digest"] for r in records]
    assert digests == _reference_digests(overrides)
    assert len(set(digests)) == STEPS

    names = ["zh_a", "zh_b", "en_a", "code_a"]
    for record in (records[2], records[5]):
        keys = [f"val_loss/{n}" for n in names] + [
            f"val_loss_by_language/{lang}" for lang in ("zh", "en", "code")] + ["val_loss"]
        assert all(isinstance(record[k], float) for k in keys), record
        for lang in ("zh", "en", "code"):  # one validation batch (train.eval_steps=1)
            assert record[f"val_batch_loss_by_language/{lang}"] == pytest.approx(
                [record[f"val_loss_by_language/{lang}"]], rel=1e-12)
    assert "val_loss/zh_a" not in records[0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run_dir / "tensorboard").iterdir():
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"val_loss/en_a", "val_loss/zh_b", "val_loss_by_language/zh"} <= tags
