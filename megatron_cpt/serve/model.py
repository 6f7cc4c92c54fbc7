"""A checkpoint as generation runs it: its model (``megatron_cpt.json``) in the compute dtype without
FP8 or recompute, built at TP x PP without sequence parallelism (a decoding step's single token
cannot be split over TP), its weights loaded as ``megatron-cpt eval`` loads them (megatron-core
reshards the stored tensors to the layout)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.errors import ConfigError, UserError


def checkpoint_model(ckpt: str, dtype: Optional[str] = None) -> ModelConfig:
    from megatron_cpt.checkpointing.dist_io import read_meta
    from megatron_cpt.config.loader import build_dataclass

    model = build_dataclass(ModelConfig, read_meta(ckpt)["model"], "model")
    return dataclasses.replace(model, dtype=dtype or model.dtype, fp8=None, recompute="none")


def generation_layout(model: ModelConfig, tp: int, pp: int) -> ParallelConfig:
    """The layout, checked against the model: one line naming ``--tp/--pp`` when it does not fit."""
    parallel = ParallelConfig(tp=tp, pp=pp, sequence_parallel=False)
    try:
        parallel.validate(model.num_layers, model.num_attention_heads, model.num_query_groups)
    except ConfigError as exc:
        raise UserError(f"--tp/--pp: {str(exc).split(': ', 1)[-1]}") from None
    return parallel


def load_generation_model(ckpt: str, model: ModelConfig, parallel: ParallelConfig):
    """Collective: this rank's model chunks with the checkpoint's weights, in evaluation mode."""
    from megatron_cpt.checkpointing.dist_io import load_model_weights
    from megatron_cpt.model.build import build_model

    chunks = build_model(model, parallel, initialize=False)
    load_model_weights(chunks, ckpt)
    for chunk in chunks:
        chunk.eval()
    return chunks
