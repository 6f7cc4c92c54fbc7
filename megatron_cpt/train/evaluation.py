"""Validation during training: the blend's validation split (``val_loss``) and each source's own
validation set (``val_loss/<source>``), plus the per-language mean
(``val_loss_by_language/<language>``, sources weighted by their training tokens), so forgetting
of the original language shows up while the additional one is learned. The per-language loss of
each validation batch (``val_batch_loss_by_language/<language>``, a list) lets the ALMR fit
bootstrap over the validation batches."""

from __future__ import annotations

from megatron_cpt.config.recipe import Recipe
from megatron_cpt.data.datasets import TrainingData, microbatches
from megatron_cpt.run_files import LANGUAGE_BATCH_LOSSES, LANGUAGE_LOSS
from megatron_cpt.train.step import evaluate


def validation_samples(cfg: Recipe) -> int:
    """Samples each validation set needs: every evaluation reads the same first window."""
    if not cfg.train.eval_interval:
        return 0
    return cfg.train.eval_steps * cfg.train.global_batch_size


def evaluate_validation_sets(model, data: TrainingData, cfg: Recipe, dp_rank: int, dp_size: int,
                             num_micro: int) -> dict:
    values: dict = {}
    if data.valid is not None:
        values["val_loss"] = _mean(_batch_losses(model, data.valid, cfg, dp_rank, dp_size,
                                                 num_micro))
    by_language: dict[str, list[tuple[list[float], float, int]]] = {}
    for source in data.plan.sources:
        dataset = data.valid_by_source.get(source.name)
        if dataset is None:
            continue
        batches = _batch_losses(model, dataset, cfg, dp_rank, dp_size, num_micro)
        loss = _mean(batches)
        values[f"val_loss/{source.name}"] = loss
        if source.language != "-":
            by_language.setdefault(source.language, []).append(
                ([batch_loss for batch_loss, _ in batches], loss, source.train_tokens))
    for language, members in by_language.items():
        total = sum(weight for _, _, weight in members)
        values[LANGUAGE_LOSS + language] = sum(l * w for _, l, w in members) / total
        values[LANGUAGE_BATCH_LOSSES + language] = [
            sum(per_batch[i] * w for per_batch, _, w in members) / total
            for i in range(cfg.train.eval_steps)]
    return values


def _mean(batches: list[tuple[float, int]]) -> float:
    count = sum(tokens for _, tokens in batches)
    # A batch without loss tokens (a validation window longer than a chat validation set) has
    # a NaN mean and no weight.
    return sum(loss * tokens for loss, tokens in batches if tokens) / count if count else float("nan")


def _batch_losses(model, dataset, cfg: Recipe, dp_rank: int, dp_size: int,
                  num_micro: int) -> list[tuple[float, int]]:
    gbs = cfg.train.global_batch_size
    # A fixed window of the validation set, so every evaluation measures the same samples.
    streams = [microbatches(dataset, i * gbs, cfg.train, dp_rank, dp_size)
               for i in range(cfg.train.eval_steps)]
    return evaluate(model, streams, num_micro, cfg.train.seq_length, cfg.train.micro_batch_size)
