"""Packed sequences for megatron-core: conversation boundaries -> ``PackedSeqParams`` (THD).

A packed sequence is one micro-batch row holding several conversations one after another; its
``cu_seqlens`` are their cumulative lengths, ``[0, l1, l1 + l2, ..., seq_length]`` (padding, if
any, is a last sequence of its own). Handed to ``GPTModel.forward(packed_seq_params=...)``,
megatron-core runs the layers in the THD layout: rotary positions restart at every boundary
(``apply_rotary_pos_emb`` with ``cu_seqlens``) and the core attention keeps the conversations apart:
Transformer Engine's fused attention in the TE spec, ``SDPAttention`` per conversation otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams


@dataclass
class HostPackedSeqParams(PackedSeqParams):
    """megatron-core's packed-sequence parameters plus the sequences' lengths as Python ints, read
    once per micro-batch from the host copy of ``cu_seqlens``: ``SDPAttention`` splits every
    layer's query, key and value by them, which from the device tensor would make each layer wait
    for the GPU (a host-device sync per layer)."""

    lengths: tuple[int, ...] = ()


def packed_seq_params(cu_seqlens: torch.Tensor, device: torch.device) -> HostPackedSeqParams:
    """``cu_seqlens`` of a micro-batch of one packed sequence ([1, n] or [n], on the host)."""
    boundaries = cu_seqlens.reshape(-1).to(torch.int32)
    lengths = tuple((boundaries[1:] - boundaries[:-1]).tolist())
    # A Python int: megatron-core sizes the rotary table with it, TE its kernels.
    longest = max(lengths)
    boundaries = boundaries.to(device, non_blocking=True)
    return HostPackedSeqParams(qkv_format="thd", cu_seqlens_q=boundaries, cu_seqlens_kv=boundaries,
                               max_seqlen_q=longest, max_seqlen_kv=longest, lengths=lengths)
