"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

A drop-in ``core_attention`` submodule for megatron-core's ``SelfAttention`` spec, used when
Transformer Engine is absent: it takes the same constructor and forward arguments as
``megatron.core.transformer.dot_product_attention.DotProductAttention`` and lets PyTorch pick the
flash / memory-efficient kernel on CUDA (and its fused kernel on the CPU) instead of materialising
the [b, heads, s, s] score matrix.

Packed sequences (``packed_seq_params`` in the THD layout, ``model/packed_sequences.py``): megatron-core
hands over [t, heads, d] with the rotary positions already restarted per sequence; each sequence
gets its own causal attention, so no token sees another sequence's tokens. The sequences' lengths
come from the host once per micro-batch (``HostPackedSeqParams.lengths``), not from the device
copy of ``cu_seqlens`` in every layer.

Generation with megatron-core's KV cache (``megatron_cpt/serve/decode.py``): after the prompt,
megatron-core passes ``attn_mask_type=no_mask`` with the new tokens' queries and every cached key.
A query block shorter than the keys is the end of the sequence, so the causal mask is aligned to
the bottom right (torch's ``is_causal`` aligns it to the top left).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPAttention(MegatronModule):
    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not implement context parallelism; use the TE spec")
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"SDPAttention supports causal masks only, got {attn_mask_type}")
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if attention_bias is not None:
            raise ValueError("SDPAttention does not support an attention bias")
        if packed_seq_params is not None:
            if packed_seq_params.qkv_format != "thd":
                raise ValueError(f"SDPAttention packs sequences in the thd layout only, got "
                                 f"{packed_seq_params.qkv_format}")
            lengths = getattr(packed_seq_params, "lengths", None)
            if not lengths:
                raise ValueError("SDPAttention needs the packed sequences' lengths on the host "
                                 "(model.packed_sequences.packed_seq_params)")
            return self._packed(query, key, value, lengths)
        # megatron-core layout [s, b, heads, d] -> SDPA's [b, heads, s, d].
        causal = attn_mask_type != AttnMaskType.no_mask
        out = self._causal(*(t.permute(1, 2, 0, 3) for t in (query, key, value)), causal=causal)
        # [b, heads, s, d] -> [s, b, heads * d]
        s, b = out.size(2), out.size(0)
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)

    def _causal(self, q, k, v, causal: bool = True):
        """Causal attention over [b, heads, s, d]; queries are the last ``q.size(2)`` positions."""
        mask = None
        if causal and q.size(2) != k.size(2):
            # True where a query may attend: key position <= the query's own position.
            offset = k.size(2) - q.size(2)
            mask = (torch.arange(k.size(2), device=q.device)[None, :]
                    <= torch.arange(q.size(2), device=q.device)[:, None] + offset)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None and q.size(2) > 1,
            scale=self.softmax_scale,
            dropout_p=self.dropout_p if self.training else 0.0, enable_gqa=q.size(1) > k.size(1))

    def _packed(self, query, key, value, lengths: tuple[int, ...]):
        """[t, heads, d] holding several sequences -> [t, heads * d], each attending to itself."""
        outputs = [self._causal(*(t.permute(1, 0, 2).unsqueeze(0) for t in parts))
                   for parts in zip(*(t.split(lengths) for t in (query, key, value)))]
        # each [1, heads, s_i, d] -> [s_i, heads * d]
        return torch.cat([o[0].permute(1, 0, 2).reshape(o.size(2), -1) for o in outputs])
