"""Model FLOPs per token: Megatron-LM's figure for Llama-3-8B, recompute as hardware FLOPs, and the
peak table MFU is measured against."""

from __future__ import annotations

import pytest

from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.presets import preset_fields
from megatron_cpt.profile.flops import flops_per_token
from megatron_cpt.profile.hardware import find_accelerator, peak_for, training_precision

LLAMA3_8B = ModelConfig(**{k: v for k, v in preset_fields("llama3-8b").items()})


def megatron_lm_flops(batch: int, seq: int, layers: int, hidden: int, ffn: int, heads: int,
                      groups: int, padded_vocab: int) -> float:
    """Megatron-LM's num_floating_point_operations (training.py, transformer_flops) for a dense
    GQA model with SwiGLU and no MTP/MoE, term by term as written there."""
    forward_backward, fma, ffn_expansion = 3, 2, 3
    kv_channels = hidden // heads
    query, key, value = kv_channels * heads, kv_channels * groups, kv_channels * groups
    self_attn = forward_backward * fma * (hidden * (query + key + value)
                                         + query * seq / 2 * 2 + query * hidden)
    return batch * seq * (forward_backward * fma * hidden * ffn * ffn_expansion * layers
                          + self_attn * layers
                          + forward_backward * fma * hidden * padded_vocab)


def test_llama3_8b_at_8192_matches_megatron_lm_within_half_a_percent():
    per_token = flops_per_token(LLAMA3_8B, 8192).model
    reference = megatron_lm_flops(1, 8192, 32, 4096, 14336, 32, 8, 128256)
    assert abs(per_token * 8192 - reference) / reference < 0.005
    # 6 N for the 8.03e9 weights (less the embedding lookup, which is no product), plus the
    # causal attention term 6 L q s: 5.15e10 per token.
    embedding = 128256 * 4096
    assert per_token == 6 * (8_030_261_248 - embedding - 32 * 2 * 4096 - 4096) + 6 * 32 * 4096 * 8192


def test_recompute_adds_hardware_flops_only():
    full = flops_per_token(LLAMA3_8B, 8192, recompute="full")
    none = flops_per_token(LLAMA3_8B, 8192, recompute="none")
    selective = flops_per_token(LLAMA3_8B, 8192, recompute="selective")
    assert full.model == none.model == selective.model == none.hardware
    # Full recompute repeats every layer's forward pass (a third of fwd+bwd), not the logits.
    assert full.hardware - full.model == pytest.approx((none.model - none.logits) / 3)
    assert selective.hardware - selective.model == pytest.approx(none.attention_scores / 3)


def test_vocabulary_is_counted_padded_like_the_output_layer():
    model = ModelConfig(vocab_size=1000, make_vocab_size_divisible_by=16)
    assert flops_per_token(model, 128, tp=2).logits == 6 * model.hidden_size * 1024


@pytest.mark.parametrize("device, row", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"), ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
])
def test_device_names_map_to_their_table_row(device, row):
    assert find_accelerator(device).name == row


def test_peaks_are_dense_and_unknown_devices_get_none():
    sxm = peak_for("NVIDIA H100 80GB HBM3", "bf16")
    assert sxm.tflops == 989.4  # not the 1979 sparsity figure
    assert "H100 SXM" in sxm.describe() and "989.4" in sxm.describe()
    assert peak_for("NVIDIA H100 80GB HBM3", "fp8").tflops == 1978.9
    assert peak_for("NVIDIA A100-SXM4-80GB", "fp8").tflops is None  # no FP8 tensor cores
    for unknown in ("NVIDIA GH200 480GB", "NVIDIA GeForce RTX 4090", "cpu"):
        assert peak_for(unknown, "bf16").tflops is None
    assert peak_for("NVIDIA H100 80GB HBM3", "fp32").tflops is None
    assert training_precision("bf16", fp8=True) == "fp8"
    assert training_precision("bf16", fp8=False) == "bf16"
