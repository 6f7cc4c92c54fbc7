"""What CPU runs cannot show: NCCL tensor parallelism with sequence parallelism and NCCL
pipeline p2p with interleaving at PP=2 (2 GPUs each), the Transformer Engine spec, and a checkpoint
converted on CPU ranks (where TE is installed) loaded into the TE spec. Each test
is skipped where its GPUs or Transformer Engine are absent."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "distributed")]

from conversion_fixtures import make_hf_llama, run_cli  # noqa: E402
from harness import losses, train  # noqa: E402
from token_fixtures import EOD_ID, write_byte_dataset  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
needs_te = pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None,
                              reason="needs Transformer Engine")


def _common(tmp_path: Path, steps: int) -> list[str]:
    prefix = tmp_path / "stdlib"
    if not prefix.with_suffix(".bin").exists():
        write_byte_dataset(prefix)
    return [f"data.paths=[{prefix}]", f"data.eod_token_id={EOD_ID}", f"train.steps={steps}",
            "train.global_batch_size=8", "train.micro_batch_size=2", "train.seq_length=128",
            "optim.schedule.warmup_steps=1", "logging.tensorboard=false",
            "checkpoint.save_at_end=false"]


def _layout(run_dir: Path) -> dict:
    return json.loads((run_dir / "layout.json").read_text())


@needs_two_gpus
def test_tp2_with_sequence_parallelism_over_nccl_matches_one_gpu(tmp_path):
    common = _common(tmp_path, 5) + ["model.dtype=fp32", "model.attention_backend=sdpa"]
    train(common + ["launch.procs_per_node=1", "parallel.tp=1", f"logging.run_dir={tmp_path / 'tp1'}"])
    train(common + ["launch.procs_per_node=2", "parallel.tp=2", f"logging.run_dir={tmp_path / 'tp2'}"])
    layout = _layout(tmp_path / "tp2")
    assert (layout["tp"], layout["sequence_parallel"], layout["norm_grads_reduced_over_tp"]) == (
        2, True, True)
    for a, b in zip(losses(tmp_path / "tp1"), losses(tmp_path / "tp2")):
        assert abs(a - b) <= 1e-4 * abs(a), (a, b)


@needs_two_gpus
def test_pp2_with_interleaving_over_nccl_matches_one_gpu(tmp_path):
    """PP=2 with virtual stages: each rank's sends go to its one peer, with activations and
    gradients of the same shape; over NCCL they must not swap (unbatched, overlapped p2p)."""
    common = _common(tmp_path, 5) + ["model.dtype=fp32", "model.attention_backend=sdpa",
                                     "parallel.tp=1"]
    train(common + ["launch.procs_per_node=1", f"logging.run_dir={tmp_path / 'pp1'}"])
    train(common + ["launch.procs_per_node=2", "parallel.pp=2", "parallel.vpp=2",
                    f"logging.run_dir={tmp_path / 'pp2-vpp2'}"])
    layout = _layout(tmp_path / "pp2-vpp2")
    assert (layout["pp"], layout["vpp"], layout["pipeline_p2p"]) == (2, 2, "overlapped")
    for a, b in zip(losses(tmp_path / "pp1"), losses(tmp_path / "pp2-vpp2")):
        assert abs(a - b) <= 1e-4 * abs(a), (a, b)


@needs_te
def test_transformer_engine_spec_trains(tmp_path):
    run_dir = tmp_path / "te"
    train(_common(tmp_path, 3) + ["model.dtype=bf16", "model.attention_backend=te",
                                  "launch.procs_per_node=1", "parallel.tp=1",
                                  f"logging.run_dir={run_dir}"])
    assert _layout(run_dir)["core_attention"] == "TEDotProductAttention"
    values = losses(run_dir)
    assert len(values) == 3 and all(math.isfinite(v) for v in values)


@needs_te
def test_cpu_converted_checkpoint_loads_into_the_te_spec(tmp_path):
    hf = make_hf_llama(tmp_path / "hf", vocab=512)
    ckpt = tmp_path / "ckpt"
    converted = run_cli("convert", "hf-to-mcore", "--hf-dir", str(hf), "--out-dir", str(ckpt),
                        "--dtype", "fp32")  # CPU ranks over gloo: conversion hides the GPUs
    assert converted.returncode == 0, converted.stderr[-3000:]
    # The tiny preset's shape with make_hf_llama's FFN width and vocabulary.
    common = _common(tmp_path, 2) + [
        "model.ffn_hidden_size=128", "model.vocab_size=512", "model.dtype=fp32",
        f"checkpoint.pretrained={ckpt}", "launch.procs_per_node=1", "parallel.tp=1"]
    first_losses = {}
    for backend in ("sdpa", "te"):
        run_dir = tmp_path / backend
        out = train(common + [f"model.attention_backend={backend}", f"logging.run_dir={run_dir}"])
        assert f"initial weights from {ckpt}" in out.stdout
        first_losses[backend] = losses(run_dir)[0]
    # The same weights in both specs (the TE layers' FP8 state starts fresh): the same first loss,
    # also with TE's fused cross-entropy (on with the TE spec on GPUs) against the unfused one.
    assert abs(first_losses["te"] - first_losses["sdpa"]) <= 1e-3 * first_losses["sdpa"]


@needs_te
def test_an_sft_step_under_te_has_the_unfused_gradients(tmp_path):
    """The cross entropy the builder picks for a fine-tuning loss (its mask starts with
    untrained header tokens) gives the unfused gradients; TE < 2.8's fused kernel would scale every
    token's gradient by the first mask value, 0 (grad_norm 0)."""
    import os
    import subprocess

    from harness import free_port

    out = tmp_path / "grad_norms.json"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
               LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("sft_fused_loss_step.py")),
                           str(out), "te"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads(out.read_text())
    norms = result["grad_norm"]
    print(f"TE {result['te_version']}: fused chosen {result['chosen_fused']}, grad norms {norms}")
    assert norms["chosen"] > 0
    assert abs(norms["chosen"] - norms["unfused"]) <= 1e-2 * norms["unfused"], norms
