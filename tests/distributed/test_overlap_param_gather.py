"""``parallel.overlap_param_gather`` with the distributed optimizer at DP2: every checkpoint, and its
Hugging Face export, holds bitwise the weights of the same run without overlap; and a run resumed
twice matches the uninterrupted run bitwise.

Without the parameter sync before a save, the distributed optimizer's step has updated only each
rank's own shard: the other half of the weights would still be those of the previous step.

The overlapped run also writes its interval checkpoints in the background
(``checkpoint.async_save``): they too must equal the blocking run's. The resumed run starts from
the step-2 checkpoint the overlapped run wrote in the background, stops at step 4 (a blocking
save) and resumes from that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import free_port, losses, metrics, run_cli, train
from token_fixtures import byte_run_overrides

STEPS = 6
SAVED = ["step_000002", "step_000004", "step_000006"]
DP2 = ["launch.procs_per_node=2", "parallel.tp=1", "parallel.distributed_optimizer=true"]
OVERLAP = ["parallel.overlap_param_gather=true", "parallel.overlap_grad_reduce=true"]
ASYNC = ["checkpoint.async_save=true"]


def _digests(directories: list[Path]) -> dict[str, dict[str, str]]:
    script = Path(__file__).with_name("checkpoint_digests.py")
    proc = subprocess.run([sys.executable, str(script), *map(str, directories)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, MASTER_PORT=str(free_port())))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _safetensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.fixture(scope="module")
def runs(tmp_path_factory, byte_data):
    root = tmp_path_factory.mktemp("overlap")
    common = byte_run_overrides(byte_data, steps=STEPS) + ["checkpoint.save_interval=2"] + DP2
    plain, overlap, split = root / "plain", root / "overlap", root / "split"
    train(common + [f"logging.run_dir={plain}"])
    out = train(common + OVERLAP + ASYNC + [f"logging.run_dir={overlap}"])
    # Interval saves go to the background; the last one, as the run stops, blocks.
    assert [n for n in SAVED if f"writing {n} in the background" in out.stdout] == SAVED[:2]
    # The overlapped run as if it had been stopped after step 2: resumed from the checkpoint it
    # wrote in the background, stopped again at step 4 and resumed to the end.
    shutil.copytree(overlap, split)
    for name in SAVED[1:]:
        shutil.rmtree(split / "checkpoints" / name)
    (split / "checkpoints" / "latest").write_text(f"{SAVED[0]}\n")
    for stop in (4, None):
        out = train(common + OVERLAP + [f"logging.run_dir={split}"]
                    + ([f"train.stop_at_step={stop}"] if stop else []))
        resumed_at = 2 if stop else 4
        assert f"resumed from {split / 'checkpoints' / f'step_{resumed_at:06d}'} at step " \
               f"{resumed_at}" in out.stdout
    return root, plain, overlap, split


def test_every_checkpoint_equals_the_run_without_overlap(runs):
    _, plain, overlap, split = runs
    directories = [run / "checkpoints" / name for run in (plain, overlap, split) for name in SAVED]
    digests = _digests(directories)
    for name in SAVED:
        reference = digests[str(plain / "checkpoints" / name)]
        assert len(reference) >= 9  # embedding, output, final norm, 6 stacked layer tensors
        for run in (overlap, split):
            found = digests[str(run / "checkpoints" / name)]
            differing = sorted(k for k in reference if found.get(k) != reference[k])
            assert not differing, f"{run.name}/{name}: {len(differing)} tensors differ: {differing[:4]}"


def test_hf_export_equals_the_run_without_overlap(runs):
    import torch

    root, plain, overlap, _ = runs
    exports = {}
    for run in (plain, overlap):
        exports[run] = root / f"hf_{run.name}"
        run_cli(["convert", "mcore-to-hf", "--ckpt-dir", str(run / "checkpoints" / SAVED[-1]),
                 "--out-dir", str(exports[run])])
    reference, found = _safetensors(exports[plain]), _safetensors(exports[overlap])
    assert sorted(reference) == sorted(found) and len(reference) > 10
    differing = [name for name in reference if not torch.equal(reference[name], found[name])]
    assert not differing, f"{len(differing)} of {len(reference)} exported tensors differ"


def test_losses_bitwise_with_overlap_and_across_resumes(runs):
    _, plain, overlap, split = runs
    assert len(losses(plain)) == STEPS
    assert losses(overlap) == losses(plain)
    assert [r["step"] for r in metrics(split)] == list(range(1, STEPS + 1))
    assert losses(split) == losses(overlap)


def test_background_writes_were_committed(runs):
    _, _, overlap, _ = runs
    ckpt = overlap / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == SAVED[-1]
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", *SAVED]  # no .tmp left


def test_interleaved_chunks_sync_in_the_order_megatron_core_documents(tmp_path):
    """PP2 x VPP3 with overlapped gradient reduction and parameter all-gather: megatron-core's
    interleaved schedule calls ``param_sync_func`` for chunks 0 and 1 before the first forward
    pass and for each later chunk while an earlier one computes, and ``grad_sync_func`` once per
    chunk in backward order (last chunk first); the losses equal those without overlap, bitwise."""
    chunks = 3
    script = Path(__file__).with_name("record_sync_hooks.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(script), str(tmp_path), "parallel.tp=1", "parallel.pp=2", f"parallel.vpp={chunks}",
         f"model.num_layers={2 * chunks}", "launch.procs_per_node=2", "train.seq_length=32",
         "train.global_batch_size=8", "train.micro_batch_size=2"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank_{rank}.json").read_text())
        assert result["losses"]["overlap"] == result["losses"]["plain"]
        for events in result["steps"]:
            calls = {kind: [chunk for k, chunk in events if k == kind] for kind in ("param", "grad")}
            assert calls == {"param": list(range(chunks)), "grad": list(reversed(range(chunks)))}
            position = {}  # the first time each (kind, chunk) happened in the step
            for index, event in enumerate(events):
                position.setdefault(tuple(event), index)
            first_forward = position[("forward", 0)]
            for chunk in range(chunks):
                assert position[("param", chunk)] < position[("forward", chunk)]
            # Chunks 0 and 1 before any compute; the others during the forwards of earlier chunks.
            assert max(position[("param", 0)], position[("param", 1)]) < first_forward
            assert all(position[("param", chunk)] > first_forward for chunk in range(2, chunks))
        # Evaluation after a step: one forced all-gather per bucket group (sync_parameters), no
        # parameter sync hook and no other all-gather during its forward passes; no FP8 (a recipe
        # with FP8 evaluates in its compute dtype, as `megatron-cpt eval` does), which the
        # training step around it keeps.
        evaluation = result["evaluation"]
        forced = [["gather", "forced"]] * evaluation["bucket_groups"]
        for phase in ("validation", "scoring"):
            calls = [event for event in evaluation[phase] if event[0] != "forward"]
            assert calls == forced, (phase, calls)
        step_kinds = {event[0] for event in evaluation["training_step"]}
        assert {"fp8", "param", "gather"} <= step_kinds
        assert evaluation["fp8_after"] == "hybrid"
