"""Packed sequences in the SDPA backend take their lengths from the host, once per micro-batch:
the device copy of ``cu_seqlens`` is never read by a layer (on a GPU each read would wait for the
device). The isolation itself: tests/distributed/test_sft_isolation.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_cpt.model.packed_sequences import packed_seq_params
from megatron_cpt.model.sdpa_attention import SDPAttention


def _attention() -> SDPAttention:
    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2,
                               attention_dropout=0.0, use_cpu_initialization=True)
    return SDPAttention(config, 1, AttnMaskType.causal, "self").eval()


def test_lengths_come_from_the_host_copy():
    params = packed_seq_params(torch.tensor([[0, 5, 9, 16]], dtype=torch.int32), torch.device("meta"))
    assert params.lengths == (5, 4, 7) and params.max_seqlen_q == 7
    assert params.cu_seqlens_q.device.type == "meta"


def test_layers_never_read_the_device_boundaries():
    attention = _attention()
    q, k, v = (torch.randn(16, 2, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    # Boundaries on the meta device: any read of them in the layer would raise.
    packed = packed_seq_params(torch.tensor([0, 5, 9, 16], dtype=torch.int32), torch.device("meta"))
    out = attention(q, k, v, None, packed_seq_params=packed)
    # Each sequence attends to itself alone: the same as attending to it on its own.
    alone = torch.cat([attention(q[a:b].unsqueeze(1), k[a:b].unsqueeze(1), v[a:b].unsqueeze(1),
                                 None)[:, 0] for a, b in ((0, 5), (5, 9), (9, 16))])
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-6)


def test_packed_parameters_without_host_lengths_are_refused():
    packed = packed_seq_params(torch.tensor([0, 16], dtype=torch.int32), torch.device("cpu"))
    bare = dataclasses.replace(packed, lengths=())
    with pytest.raises(ValueError, match="lengths on the host"):
        _attention()(*(torch.randn(16, 2, 8) for _ in range(3)), None, packed_seq_params=bare)
