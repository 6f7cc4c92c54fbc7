"""The same 10 steps from the same initial weights and data give the same losses in every layout."""

from __future__ import annotations

import pytest

from harness import losses, train, write_initial_weights
from token_fixtures import EOD_ID, write_byte_dataset

STEPS = 10
LAYOUTS = {
    "tp1-pp1": ["launch.procs_per_node=1", "parallel.tp=1"],
    "tp2-pp1": ["launch.procs_per_node=2", "parallel.tp=2"],
    "tp1-pp2": ["launch.procs_per_node=2", "parallel.tp=1", "parallel.pp=2"],
    "tp2-pp2": ["launch.procs_per_node=4", "parallel.tp=2", "parallel.pp=2"],
    "tp1-pp2-vpp2": ["launch.procs_per_node=2", "parallel.tp=1", "parallel.pp=2", "parallel.vpp=2"],
    "dp2": ["launch.procs_per_node=2", "parallel.tp=1"],
}


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    prefix = root / "stdlib"
    write_byte_dataset(prefix)
    common = [f"data.paths=[{prefix}]", f"data.eod_token_id={EOD_ID}", "model.dtype=fp32",
              f"train.steps={STEPS}", "train.global_batch_size=8", "train.micro_batch_size=1",
              "train.seq_length=64", "optim.schedule.warmup_steps=2", "logging.tensorboard=false",
              "checkpoint.save_at_end=false", "checkpoint.save_interval=0"]
    init = write_initial_weights(root / "init", common)
    results = {}
    for name, layout in LAYOUTS.items():
        run_dir = root / name
        train(common + layout + [f"checkpoint.pretrained={init}", f"logging.run_dir={run_dir}"])
        results[name] = losses(run_dir)
    return results


def _assert_close(reference: list[float], other: list[float], rtol: float) -> None:
    assert len(reference) == len(other) == STEPS
    for step, (a, b) in enumerate(zip(reference, other), start=1):
        assert abs(a - b) <= rtol * abs(a), f"step {step}: {a!r} vs {b!r}"


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "tp1-pp1"])
def test_layout_matches_single_rank(parity_runs, layout):
    _assert_close(parity_runs["tp1-pp1"], parity_runs[layout], rtol=1e-5)


def test_training_makes_progress(parity_runs):
    reference = parity_runs["tp1-pp1"]
    assert reference[-1] < reference[0] - 0.5
