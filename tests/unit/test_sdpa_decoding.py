"""The SDPA backend under megatron-core's KV cache: the last queries of a sequence against all its
keys give the rows that full causal attention gives them, with megatron-core's decoding call
(``attn_mask_type=no_mask``, one query) and with several new queries under the causal mask
(aligned to the bottom right, where torch's ``is_causal`` would align it to the top left)."""

from __future__ import annotations

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_cpt.model.sdpa_attention import SDPAttention


def test_last_queries_against_cached_keys_equal_full_causal_attention():
    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2,
                               attention_dropout=0.0, use_cpu_initialization=True)
    attention = SDPAttention(config, 1, AttnMaskType.causal, "self").eval()
    # [s, b, heads, d]
    q, k, v = (torch.randn(6, 2, 2, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    full = attention(q, k, v, None)
    decoding = attention(q[-1:], k, v, None, attn_mask_type=AttnMaskType.no_mask)
    torch.testing.assert_close(decoding, full[-1:], rtol=0, atol=1e-6)
    last_three = attention(q[-3:], k, v, None, attn_mask_type=AttnMaskType.causal)
    torch.testing.assert_close(last_three, full[-3:], rtol=0, atol=1e-6)
