"""Training and validation datasets: megatron-core ``GPTDataset`` over indexed ``.bin/.idx`` files,
blended by ``BlendedMegatronDatasetBuilder`` with the weights of the resolved mixture, one
validation set per source, and the micro-batches each rank reads from them.

The order of samples is a pure function of (recipe, seed, consumed samples): a resumed run reads
exactly the samples an uninterrupted run would have read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

from megatron_cpt.config.data import DataConfig
from megatron_cpt.config.train import TrainConfig
from megatron_cpt.data.mixture import MixturePlan, resolve_mixture

if TYPE_CHECKING:
    import torch


@dataclass
class SpecialTokens:
    """The two facts GPTDataset needs from a tokenizer."""

    eod: int
    vocab_size: int

    @property
    def unique_identifiers(self) -> dict:
        # Part of the dataset cache key megatron-core derives from its config.
        return {"eod": self.eod, "vocab_size": self.vocab_size}


@dataclass
class TrainingData:
    plan: MixturePlan
    train: object  # BlendedDataset, or GPTDataset for a single source
    valid: Optional[object]  # the blend's validation split
    valid_by_source: dict[str, object] = field(default_factory=dict)
    # Recorded in every checkpoint's megatron_cpt.json (chat data records its chat format).
    checkpoint_meta: dict = field(default_factory=dict)


def gpt_dataset_config(data: DataConfig, train: TrainConfig, vocab_size: int, blend,
                       cache_dir: Optional[str], with_validation: bool, seed: Optional[int] = None):
    """``seed``: of the samples' order, default ``train.seed``."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=train.seed if seed is None else seed,
        sequence_length=train.seq_length,
        blend=blend,
        split=data.split,
        path_to_cache=cache_dir,
        tokenizer=SpecialTokens(eod=data.eod_token_id, vocab_size=vocab_size),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # The causal mask is built inside attention; no [s, s] mask per sample.
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )
    # The test part of the split is held out and never read: building it costs time, and an empty
    # part would make megatron-core look for tokens forever. Same for validation when it is off.
    train_range, valid_range, _ = config.split_matrix
    config.split_matrix = [train_range, valid_range if with_validation else None, None]
    return config


def resolve_training_data(data: DataConfig, train: TrainConfig, vocab_size: Optional[int],
                          with_validation: bool):
    """The plan of a run's data, checked against the files: a ``MixturePlan`` (pre-training) or a
    ``ChatPlan`` (``data.chat``, fine-tuning)."""
    if data.chat is not None:
        from megatron_cpt.data.chat_dataset import resolve_chat_data

        return resolve_chat_data(data, train, vocab_size, with_validation)
    return resolve_mixture(data, train, vocab_size, with_validation)


def build_training_data(data: DataConfig, train: TrainConfig, vocab_size: int,
                        num_train_samples: int, num_valid_samples: int,
                        cache_dir: Optional[str] = None,
                        plan: Optional[MixturePlan] = None) -> TrainingData:
    """The blended training set, its validation split and one validation set per source, each
    of ``num_valid_samples`` (none when 0). Collective when torch.distributed is up. With
    ``data.chat``, the packed conversations instead (``chat_dataset.py``)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    with_validation = num_valid_samples > 0
    if data.chat is not None:
        from megatron_cpt.data.chat_dataset import build_chat_training_data

        plan = plan or resolve_training_data(data, train, vocab_size, with_validation)
        return build_chat_training_data(data, train, num_valid_samples, plan)
    plan = plan or resolve_mixture(data, train, vocab_size, with_validation)
    cache = data.cache_dir or cache_dir
    config = gpt_dataset_config(data, train, vocab_size, plan.blend(), cache, with_validation)
    valid_config = config
    if with_validation and data.valid_seed not in (None, train.seed):
        # Validation in its own order: the two parts are built apart, each with its seed.
        valid_config = gpt_dataset_config(data, train, vocab_size, plan.blend(), cache, True,
                                          seed=data.valid_seed)
        valid_config.split_matrix = [None, config.split_matrix[1], None]
        config.split_matrix = [config.split_matrix[0], None, None]
    # Sizes must be numbers for a weighted blend; 0 for the parts that are not built.
    sizes = [num_train_samples, num_valid_samples, 0]
    train_ds, valid_ds, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, sizes, lambda: True, config).build()
    if valid_config is not config:
        _, valid_ds, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [0, num_valid_samples, 0], lambda: True, valid_config).build()
    result = TrainingData(plan=plan, train=train_ds, valid=valid_ds)
    if with_validation:
        for source in plan.sources:
            result.valid_by_source[source.name] = build_source_validation_set(
                source.prefix, valid_config, num_valid_samples)
    return result


def build_source_validation_set(prefix: str, config, num_samples: int):
    """The validation part of one source as its own GPTDataset: the same documents the blend's
    validation split takes from it (megatron-core's split arithmetic), so none is trained on."""
    import numpy
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.utils import Split

    low_level = GPTDataset.build_low_level_dataset(prefix, config)
    documents = GPTDataset.numel_low_level_dataset(low_level)
    begin, end = config.split_matrix[Split.valid.value]
    indices = numpy.arange(int(round(begin * documents)), int(round(end * documents)),
                           dtype=numpy.int32)
    return BlendedMegatronDatasetBuilder.build_generic_dataset(
        GPTDataset, lambda: True, True, low_level, prefix, indices, num_samples, Split.valid,
        config)


def global_batch_digest(dataset, consumed_samples: int, global_batch_size: int) -> str:
    """A short hash of the token ids of the global batch that starts at ``consumed_samples``: the
    same in every layout, so runs (and a resumed run) can be compared step by step."""
    digest = hashlib.blake2b(digest_size=8)
    for index in range(consumed_samples, consumed_samples + global_batch_size):
        digest.update(dataset[index]["tokens"].numpy().tobytes())
    return digest.hexdigest()


def microbatches(dataset, consumed_samples: int, train: TrainConfig, dp_rank: int, dp_size: int
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """This DP rank's micro-batches of the global batch that starts at ``consumed_samples``.

    The global batch is split into ``num_microbatches`` slices of ``micro_batch_size x dp_size``
    consecutive samples; DP rank r takes the r-th ``micro_batch_size`` of each slice, so every
    layout with the same global batch sees the same samples.
    """
    import torch

    mbs = train.micro_batch_size
    for micro in range(train.num_microbatches(dp_size)):
        start = consumed_samples + micro * mbs * dp_size + dp_rank * mbs
        samples = [dataset[index] for index in range(start, start + mbs)]
        # cu_seqlens: the conversation boundaries of a packed sequence (micro-batches of one).
        yield {key: torch.stack([s[key] for s in samples])
               for key in ("tokens", "labels", "loss_mask", "position_ids", "cu_seqlens")
               if key in samples[0]}
