"""Validation during training: the blend's validation split (``val_loss``) and each source's own
validation set (``val_loss/<source>``), plus the per-language mean
(``val_loss_by_language/<language>``, sources weighted by their training tokens), so forgetting
of the original language shows up while the additional one is learned."""

from __future__ import annotations

from megatron_cpt.config.recipe import Recipe
from megatron_cpt.data.datasets import TrainingData, microbatches
from megatron_cpt.train.step import evaluate


def validation_samples(cfg: Recipe) -> int:
    """Samples each validation set needs: every evaluation reads the same first window."""
    if not cfg.train.eval_interval:
        return 0
    return cfg.train.eval_steps * cfg.train.global_batch_size


def evaluate_validation_sets(model, data: TrainingData, cfg: Recipe, dp_rank: int, dp_size: int,
                             num_micro: int) -> dict[str, float]:
    values: dict[str, float] = {}
    if data.valid is not None:
        values["val_loss"] = _loss_on(model, data.valid, cfg, dp_rank, dp_size, num_micro)
    by_language: dict[str, list[tuple[float, int]]] = {}
    for source in data.plan.sources:
        dataset = data.valid_by_source.get(source.name)
        if dataset is None:
            continue
        loss = _loss_on(model, dataset, cfg, dp_rank, dp_size, num_micro)
        values[f"val_loss/{source.name}"] = loss
        if source.language != "-":
            by_language.setdefault(source.language, []).append((loss, source.train_tokens))
    for language, pairs in by_language.items():
        total = sum(weight for _, weight in pairs)
        values[f"val_loss_by_language/{language}"] = sum(l * w for l, w in pairs) / total
    return values


def _loss_on(model, dataset, cfg: Recipe, dp_rank: int, dp_size: int, num_micro: int) -> float:
    gbs = cfg.train.global_batch_size
    # A fixed window of the validation set, so every evaluation measures the same samples.
    streams = [microbatches(dataset, i * gbs, cfg.train, dp_rank, dp_size)
               for i in range(cfg.train.eval_steps)]
    return evaluate(model, streams, num_micro, cfg.train.seq_length, cfg.train.micro_batch_size)
