"""What a run checks about the checkpoint it would start from, before any rank starts (in
``megatron-cpt train``'s own process) and again in the ranks: the checkpoint is whole and holds
the recipe's model. Torch is imported only when there is a checkpoint to read.
"""

from __future__ import annotations

from pathlib import Path

from megatron_cpt.checkpointing.run_checkpoints import find_resume_checkpoint
from megatron_cpt.config.checkpoint import CheckpointConfig
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.errors import CheckpointError


def check_model_matches(meta: dict, model: ModelConfig, source: str) -> None:
    """Refuse a checkpoint whose architecture differs from the recipe's model."""
    saved = meta.get("model", {})
    shape_fields = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                    "num_query_groups", "vocab_size", "tie_embeddings")
    for name in shape_fields:
        if name in saved and saved[name] != getattr(model, name):
            raise CheckpointError(
                f"{source}: model.{name} is {getattr(model, name)} in the recipe but "
                f"{saved[name]} in the checkpoint")


def check_checkpoints_before_start(checkpoint: CheckpointConfig, ckpt_dir: Path,
                                   model: ModelConfig) -> None:
    """Run before any rank starts, as the data files are checked: the initial weights, and the
    checkpoint the run would resume from, are complete, whole, and of the recipe's model."""
    resume_from = find_resume_checkpoint(ckpt_dir) if checkpoint.resume else None
    if resume_from is None and not checkpoint.pretrained:
        return
    from megatron_cpt.checkpointing.dist_io import read_meta  # torch's checkpoint index reader

    if resume_from is not None:
        check_model_matches(read_meta(resume_from), model, f"checkpoint '{resume_from}'")
    else:
        check_model_matches(read_meta(checkpoint.pretrained), model,
                            f"checkpoint.pretrained '{checkpoint.pretrained}'")
