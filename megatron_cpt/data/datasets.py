"""Training and validation datasets: megatron-core ``GPTDataset`` over indexed ``.bin/.idx`` files,
blended by ``BlendedMegatronDatasetBuilder``, and the micro-batches each rank reads from them.

The order of samples is a pure function of (recipe, seed, consumed samples): a resumed run reads
exactly the samples an uninterrupted run would have read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from megatron_cpt.config.data import DataConfig
from megatron_cpt.config.train import TrainConfig


@dataclass
class SpecialTokens:
    """The two facts GPTDataset needs from a tokenizer."""

    eod: int
    vocab_size: int

    @property
    def unique_identifiers(self) -> dict:
        # Part of the dataset cache key megatron-core derives from its config.
        return {"eod": self.eod, "vocab_size": self.vocab_size}


def check_dataset_files(paths: list[str], field: str = "data.paths") -> None:
    for prefix in paths:
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                raise FileNotFoundError(f"{field}: '{prefix}{suffix}' does not exist")


def gpt_dataset_config(data: DataConfig, train: TrainConfig, vocab_size: int, blend, split,
                       cache_dir: Optional[str]):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=train.seed,
        sequence_length=train.seq_length,
        blend=blend,
        split=split,
        path_to_cache=cache_dir,
        tokenizer=SpecialTokens(eod=data.eod_token_id, vocab_size=vocab_size),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # The causal mask is built inside attention; no [s, s] mask per sample.
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )


def build_datasets(data: DataConfig, train: TrainConfig, vocab_size: int, num_train_samples: int,
                   num_valid_samples: int, cache_dir: Optional[str] = None):
    """Returns (train_dataset, valid_dataset or None). Collective when torch.distributed is up."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    check_dataset_files(data.paths)
    blend = (list(data.paths), list(data.weights) if data.weights is not None else None)
    config = gpt_dataset_config(data, train, vocab_size, blend, data.split,
                                data.cache_dir or cache_dir)
    sizes = [num_train_samples, num_valid_samples if num_valid_samples > 0 else None, None]
    train_ds, valid_ds, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, sizes, lambda: True, config).build()
    return train_ds, valid_ds


def global_batch_indices(consumed_samples: int, global_batch_size: int) -> range:
    return range(consumed_samples, consumed_samples + global_batch_size)


def microbatches(dataset, consumed_samples: int, train: TrainConfig, dp_rank: int, dp_size: int
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """This DP rank's micro-batches of the global batch that starts at ``consumed_samples``.

    The global batch is split into ``num_microbatches`` slices of ``micro_batch_size x dp_size``
    consecutive samples; DP rank r takes the r-th ``micro_batch_size`` of each slice, so every
    layout with the same global batch sees the same samples.
    """
    mbs = train.micro_batch_size
    for micro in range(train.num_microbatches(dp_size)):
        start = consumed_samples + micro * mbs * dp_size + dp_rank * mbs
        samples = [dataset[index] for index in range(start, start + mbs)]
        yield {key: torch.stack([s[key] for s in samples])
               for key in ("tokens", "labels", "loss_mask", "position_ids")}
