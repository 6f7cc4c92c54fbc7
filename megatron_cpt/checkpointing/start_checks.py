"""What a run checks about the checkpoint it would start from, before any rank starts (in
``megatron-cpt train``'s own process) and again in the ranks: the checkpoint is whole and holds
the recipe's model, and (a checkpoint to resume from) loadable in the recipe's layout. Torch is
imported only when there is a checkpoint to read.
"""

from __future__ import annotations

from pathlib import Path

from megatron_cpt.checkpointing.run_checkpoints import find_resume_checkpoint
from megatron_cpt.config.checkpoint import CheckpointConfig
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.errors import CheckpointError

# The distributed optimizer's formats in a checkpoint (train/checkpoint.py says what each costs).
DP_RESHARDABLE, FULLY_RESHARDABLE = "dp_reshardable", "fully_reshardable"
# What a dp_reshardable checkpoint must share with the run that loads it.
_BUCKET_LAYOUT = ("tp", "pp", "vpp", "distributed_optimizer", "overlap_grad_reduce")


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


def saved_optimizer_format(meta: dict) -> str:
    # Checkpoints written before the format was recorded are all fully_reshardable.
    return meta.get("optimizer_format", FULLY_RESHARDABLE)


def check_optimizer_layout(meta: dict, parallel: ParallelConfig, source: str) -> None:
    """Refuse to resume a dp_reshardable checkpoint where its optimizer buckets do not fit."""
    saved = meta.get("parallel", {})
    if saved_optimizer_format(meta) != DP_RESHARDABLE or not saved.get("distributed_optimizer"):
        return
    for name in _BUCKET_LAYOUT:
        if saved.get(name) != getattr(parallel, name):
            raise CheckpointError(
                f"{source}: its distributed-optimizer state is in the dp_reshardable format, which "
                f"loads only at the parallel.{name} it was saved with ({saved.get(name)}, here "
                f"{getattr(parallel, name)}); resume once at the saved layout with "
                f"checkpoint.reshardable=true and train.stop_at_step={meta.get('step', 0) + 1}, "
                f"then at the new one")


def check_checkpoints_before_start(checkpoint: CheckpointConfig, ckpt_dir: Path,
                                   model: ModelConfig, parallel: ParallelConfig) -> None:
    """Run before any rank starts, as the data files are checked: the initial weights, and the
    checkpoint the run would resume from, are complete, whole, of the recipe's model, and (the
    latter) loadable in the recipe's layout."""
    resume_from = find_resume_checkpoint(ckpt_dir) if checkpoint.resume else None
    if resume_from is None and not checkpoint.pretrained:
        return
    from megatron_cpt.checkpointing.dist_io import read_meta  # torch's checkpoint index reader

    if resume_from is not None:
        meta = read_meta(resume_from)
        check_model_matches(meta, model, f"checkpoint '{resume_from}'")
        check_optimizer_layout(meta, parallel, f"checkpoint '{resume_from}'")
    else:
        check_model_matches(read_meta(checkpoint.pretrained), model,
                            f"checkpoint.pretrained '{checkpoint.pretrained}'")
