"""Llama-3 in both layouts: the name table between Hugging Face and megatron-core, and the few
transforms that fuse or split tensors on the way.

megatron-core keys a checkpoint globally, whatever the TP/PP layout that wrote it: the layers are
stacked along a leading axis (``decoder.layers.<name>`` has shape ``[num_layers, ...]``) and each
tensor has its full, unsplit shape. TP splits are therefore only *regions* of these global tensors,
and the functions here read exactly the Hugging Face rows/columns a region needs.

The keys are those of the Transformer Engine spec. Under the local spec, megatron-core keeps the
RMSNorm weights as separate ``input_layernorm`` / ``pre_mlp_layernorm`` modules but stores them
under the same two ``layer_norm_weight`` keys, so one table serves both specs.

=========================================================  ======================================  =======
megatron-core key                                           Hugging Face name                       how
=========================================================  ======================================  =======
embedding.word_embeddings.weight                            model.embed_tokens.weight               vocab
decoder.layers.self_attention.linear_qkv.layer_norm_weight  model.layers.*.input_layernorm.weight   copy
decoder.layers.self_attention.linear_qkv.weight             model.layers.*.self_attn.{q,k,v}_proj   qkv
decoder.layers.self_attention.linear_proj.weight            model.layers.*.self_attn.o_proj         copy
decoder.layers.mlp.linear_fc1.layer_norm_weight             model.layers.*.post_attention_layernorm copy
decoder.layers.mlp.linear_fc1.weight                        model.layers.*.mlp.{gate,up}_proj       gate_up
decoder.layers.mlp.linear_fc2.weight                        model.layers.*.mlp.down_proj            copy
decoder.final_layernorm.weight                              model.norm.weight                       copy
output_layer.weight (untied only)                           lm_head.weight                          vocab
=========================================================  ======================================  =======

- ``vocab``: the megatron table has ``padded_vocab`` rows; HF rows fill the first ``vocab_size``,
  the padding rows are zero, and export drops them.
- ``qkv``: rows are grouped per KV group, ``[q heads of the group; k; v]`` repeated for each group
  (TP splits whole groups).
- ``gate_up``: rows are ``[gate; up]`` globally; megatron-core's SwiGLU checkpoint factory makes
  each TP rank's ``[gate_shard; up_shard]`` two regions of this global tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from megatron_cpt.config.model import ModelConfig

COPY, VOCAB, QKV, GATE_UP = "copy", "vocab", "qkv", "gate_up"
LAYER_PREFIX = "decoder.layers."
Span = Optional[tuple[int, int]]  # [start, stop) along one axis; None = all of it


@dataclass(frozen=True)
class TensorMapping:
    mcore: str
    hf: tuple[str, ...]  # '*' stands for the layer number
    transform: str

    @property
    def per_layer(self) -> bool:
        return self.mcore.startswith(LAYER_PREFIX)

    def hf_names(self, layer: Optional[int] = None) -> tuple[str, ...]:
        return tuple(name.replace("*", str(layer)) for name in self.hf)


_ATTN, _MLP = "model.layers.*.self_attn.", "model.layers.*.mlp."
LLAMA_TABLE: tuple[TensorMapping, ...] = (
    TensorMapping("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), VOCAB),
    TensorMapping("decoder.layers.self_attention.linear_qkv.layer_norm_weight",
                  ("model.layers.*.input_layernorm.weight",), COPY),
    TensorMapping("decoder.layers.self_attention.linear_qkv.weight",
                  (_ATTN + "q_proj.weight", _ATTN + "k_proj.weight", _ATTN + "v_proj.weight"), QKV),
    TensorMapping("decoder.layers.self_attention.linear_proj.weight", (_ATTN + "o_proj.weight",), COPY),
    TensorMapping("decoder.layers.mlp.linear_fc1.layer_norm_weight",
                  ("model.layers.*.post_attention_layernorm.weight",), COPY),
    TensorMapping("decoder.layers.mlp.linear_fc1.weight",
                  (_MLP + "gate_proj.weight", _MLP + "up_proj.weight"), GATE_UP),
    TensorMapping("decoder.layers.mlp.linear_fc2.weight", (_MLP + "down_proj.weight",), COPY),
    TensorMapping("decoder.final_layernorm.weight", ("model.norm.weight",), COPY),
    TensorMapping("output_layer.weight", ("lm_head.weight",), VOCAB),
)
# Checkpoints written by older transformers versions carry this buffer; it is recomputed, not stored.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def mappings_for(cfg: ModelConfig) -> tuple[TensorMapping, ...]:
    """The table for this model: with tied embeddings there is no separate output layer."""
    return tuple(m for m in LLAMA_TABLE if not (cfg.tie_embeddings and m.mcore == "output_layer.weight"))


def mapping_by_key(cfg: ModelConfig) -> dict[str, TensorMapping]:
    return {m.mcore: m for m in mappings_for(cfg)}


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor of the model with its shape, in file order (embedding, layers, head)."""
    hidden, head_dim = cfg.hidden_size, cfg.kv_channels
    per_name = {
        "embed_tokens": (cfg.vocab_size, hidden), "lm_head": (cfg.vocab_size, hidden),
        "norm": (hidden,), "input_layernorm": (hidden,), "post_attention_layernorm": (hidden,),
        "q_proj": (cfg.num_attention_heads * head_dim, hidden),
        "k_proj": (cfg.num_query_groups * head_dim, hidden),
        "v_proj": (cfg.num_query_groups * head_dim, hidden),
        "o_proj": (hidden, cfg.num_attention_heads * head_dim),
        "gate_proj": (cfg.ffn_hidden_size, hidden), "up_proj": (cfg.ffn_hidden_size, hidden),
        "down_proj": (hidden, cfg.ffn_hidden_size),
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for _, names in iter_hf_groups(cfg):
        for name in names:
            shapes[name] = per_name[name.split(".")[-2]]
    return shapes


def iter_hf_groups(cfg: ModelConfig):
    """(mapping, hf names) in file order: the order mcore-to-hf writes and reads them in."""
    table = mappings_for(cfg)
    for m in table:
        if not m.per_layer and m.mcore.startswith("embedding"):
            yield m, m.hf_names()
    for layer in range(cfg.num_layers):
        for m in table:
            if m.per_layer:
                yield m, m.hf_names(layer)
    for m in table:
        if not m.per_layer and not m.mcore.startswith("embedding"):
            yield m, m.hf_names()


def mcore_shape(m: TensorMapping, cfg: ModelConfig, padded_vocab: int) -> tuple[int, ...]:
    """Shape of one layer's (or the non-layer) megatron-core tensor, without the layer axis."""
    hidden, head_dim = cfg.hidden_size, cfg.kv_channels
    if m.transform == VOCAB:
        return (padded_vocab, hidden)
    if m.transform == QKV:
        return ((cfg.num_attention_heads + 2 * cfg.num_query_groups) * head_dim, hidden)
    if m.transform == GATE_UP:
        return (2 * cfg.ffn_hidden_size, hidden)
    if m.mcore.endswith("linear_proj.weight"):
        return (hidden, cfg.num_attention_heads * head_dim)
    if m.mcore.endswith("linear_fc2.weight"):
        return (hidden, cfg.ffn_hidden_size)
    return (hidden,)


# ---- transforms -----------------------------------------------------------------------------------

def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """[q; k; v] (HF, head-major rows) -> megatron's per-group [q of group; k; v] rows."""
    cols = q.shape[1:]
    parts = [t.reshape(groups, -1, *cols) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *cols)


def split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``fuse_qkv`` for the whole tensor."""
    groups, head_dim = cfg.num_query_groups, cfg.kv_channels
    q_rows = cfg.num_attention_heads // groups * head_dim
    grouped = qkv.reshape(groups, q_rows + 2 * head_dim, *qkv.shape[1:])
    q, k, v = torch.split(grouped, [q_rows, head_dim, head_dim], dim=1)
    return tuple(t.reshape(-1, *qkv.shape[1:]).contiguous() for t in (q, k, v))


class TensorSource(Protocol):
    def read(self, name: str, rows: Span = None, cols: Span = None) -> torch.Tensor: ...


def read_mcore_region(m: TensorMapping, source: TensorSource, cfg: ModelConfig,
                      layer: Optional[int], rows: tuple[int, int], cols: Span) -> torch.Tensor:
    """Rows ``rows`` (and columns ``cols``) of the megatron-core tensor, read from HF tensors.

    For ``vocab`` only the real rows below ``vocab_size`` are returned; the caller zero-fills the
    padding rows after them.
    """
    names = m.hf_names(layer)
    start, stop = rows
    if m.transform == COPY:
        return source.read(names[0], rows, cols)
    if m.transform == VOCAB:
        return source.read(names[0], (min(start, cfg.vocab_size), min(stop, cfg.vocab_size)), cols)
    if m.transform == GATE_UP:
        ffn = cfg.ffn_hidden_size
        parts = []
        if start < ffn:
            parts.append(source.read(names[0], (start, min(stop, ffn)), cols))
        if stop > ffn:
            parts.append(source.read(names[1], (max(start, ffn) - ffn, stop - ffn), cols))
        return torch.cat(parts, dim=0)
    if m.transform == QKV:
        head_dim = cfg.kv_channels
        q_rows = cfg.num_attention_heads // cfg.num_query_groups * head_dim
        group_rows = q_rows + 2 * head_dim
        if start % group_rows or stop % group_rows:
            raise ValueError(f"{m.mcore}: rows [{start}, {stop}) do not cover whole KV groups "
                             f"of {group_rows} rows")
        g0, g1 = start // group_rows, stop // group_rows
        q = source.read(names[0], (g0 * q_rows, g1 * q_rows), cols)
        k = source.read(names[1], (g0 * head_dim, g1 * head_dim), cols)
        v = source.read(names[2], (g0 * head_dim, g1 * head_dim), cols)
        return fuse_qkv(q, k, v, g1 - g0)
    raise ValueError(f"{m.mcore}: unknown transform {m.transform}")


def split_mcore_tensor(m: TensorMapping, tensor: torch.Tensor, cfg: ModelConfig,
                       layer: Optional[int]) -> dict[str, torch.Tensor]:
    """One whole megatron-core tensor (one layer's) -> its Hugging Face tensors."""
    names = m.hf_names(layer)
    if m.transform == COPY:
        return {names[0]: tensor}
    if m.transform == VOCAB:
        return {names[0]: tensor[: cfg.vocab_size]}
    if m.transform == GATE_UP:
        gate, up = torch.chunk(tensor, 2, dim=0)
        return {names[0]: gate.contiguous(), names[1]: up.contiguous()}
    if m.transform == QKV:
        return dict(zip(names, split_qkv(tensor, cfg)))
    raise ValueError(f"{m.mcore}: unknown transform {m.transform}")
