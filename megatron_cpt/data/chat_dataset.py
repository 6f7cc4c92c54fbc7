"""Supervised fine-tuning data: prepared conversations -> packed training and validation sets.

    plan = resolve_chat_data(recipe.data, recipe.train, recipe.model.vocab_size)  # checks files
    data = build_chat_training_data(recipe.data, recipe.train, plan)             # datasets

Each prefix of ``data.chat.prefixes`` (``megatron-cpt data prepare-chat``) gives up
``data.chat.valid_share`` of its conversations, drawn with ``train.seed``, to validation. The
training conversations are packed best-fit into sequences of ``train.seq_length`` tokens, once;
every epoch visits the packs in a new order (``train.seed`` and the epoch number). A pack item
holds, besides the tokens, labels and loss mask GPTDataset gives, the boundaries of its
conversations (``cu_seqlens``): attention stays inside each conversation and positions restart at
each (``megatron_cpt.model.packed_sequences``). The label of a conversation's last token (the first
token of the next one) and the padding are never trained. Everything is a function of the recipe,
so a resumed run reads exactly the sequences an uninterrupted run would have read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from megatron_cpt.config.data import DataConfig
from megatron_cpt.config.train import TrainConfig
from megatron_cpt.data.index_file import sequence_lengths
from megatron_cpt.data.packing import Packing, pack_best_fit
from megatron_cpt.data.prepare_chat import MASK_SUFFIX, chat_paths
from megatron_cpt.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass
class ChatSource:
    name: str
    prefix: str
    lengths: np.ndarray  # tokens per conversation
    valid: np.ndarray  # indices of the held-out conversations
    train: np.ndarray  # indices of the others
    trained_tokens: int
    language: str = "-"  # ``evaluation`` reads it; chat sources have no per-language losses

    @property
    def train_tokens(self) -> int:
        return int(self.lengths[self.train].sum())


@dataclass
class ChatPlan:
    """The chat data a run trains on, resolved from the prepared files."""

    sources: list[ChatSource]
    seq_length: int
    chat_format: dict  # as ``prepare-chat`` recorded it: template, end-of-turn id, ...
    train_packing: Packing
    valid_packing: Packing
    global_batch_size: int
    steps: int
    file_name = "chat_data.json"

    @property
    def epochs(self) -> float:
        return self.steps * self.global_batch_size / max(1, len(self.train_packing.packs))

    def to_dict(self) -> dict:
        return {
            "seq_length": self.seq_length, "steps": self.steps,
            "global_batch_size": self.global_batch_size, "epochs": round(self.epochs, 4),
            "train_sequences": len(self.train_packing.packs),
            "train_packing_efficiency": round(self.train_packing.efficiency, 4),
            "valid_sequences": len(self.valid_packing.packs),
            "valid_packing_efficiency": round(self.valid_packing.efficiency, 4),
            "chat_format": {k: v for k, v in self.chat_format.items() if k != "template"},
            "sources": [{"name": s.name, "prefix": s.prefix, "conversations": len(s.lengths),
                         "train_conversations": len(s.train), "valid_conversations": len(s.valid),
                         "tokens": int(s.lengths.sum()), "trained_tokens": s.trained_tokens,
                         "valid_indices": s.valid.tolist()}
                        for s in self.sources]}

    def format_table(self) -> str:
        lines = [f"chat data: sequences of {self.seq_length} tokens, "
                 f"{self.chat_format['kind']} format (end of turn {self.chat_format['end_of_turn']})",
                 f"  {'source':<24} {'conversations':>13} {'train':>8} {'valid':>8} "
                 f"{'tokens':>12} {'trained':>12}"]
        for s in self.sources:
            lines.append(f"  {s.name:<24} {len(s.lengths):>13,} {len(s.train):>8,} "
                         f"{len(s.valid):>8,} {int(s.lengths.sum()):>12,} {s.trained_tokens:>12,}")
        lines.append(f"  packed: {len(self.train_packing.packs):,} training sequences (efficiency "
                     f"{self.train_packing.efficiency:.1%}), {len(self.valid_packing.packs):,} "
                     f"validation sequences")
        lines.append(f"  {self.steps} steps x {self.global_batch_size} sequences = "
                     f"{self.epochs:.2f} epochs")
        return "\n".join(lines)


def _read_stats(prefix: str, where: str) -> dict:
    paths = chat_paths(prefix)
    for key in ("ids_bin", "ids_idx", "mask_bin", "mask_idx", "stats"):
        if not paths[key].is_file():
            raise ConfigError(f"{where}: '{paths[key]}' does not exist: write it with `megatron-cpt "
                              f"data prepare-chat --output-prefix {prefix} ...`")
    stats = json.loads(paths["stats"].read_text(encoding="utf-8"))
    if stats.get("kind") != "chat":
        raise ConfigError(f"{where}: '{paths['stats']}' is not the output of data prepare-chat")
    return stats


def _check_stats(stats: dict, where: str, data: DataConfig, train: TrainConfig,
                 vocab_size: Optional[int], first: Optional[dict]) -> None:
    if stats["eod_id"] != data.eod_token_id:
        raise ConfigError(f"data.eod_token_id: {data.eod_token_id}, but {where} was prepared with "
                          f"end-of-document id {stats['eod_id']} ({stats['tokenizer']})")
    if vocab_size is not None and stats["vocab_size"] > vocab_size:
        raise ConfigError(f"model.vocab_size: {vocab_size} is smaller than the vocabulary "
                          f"{stats['vocab_size']} {where} was prepared with")
    if stats["max_length"] > train.seq_length:
        raise ConfigError(
            f"train.seq_length: {train.seq_length}, but {where} holds conversations of up to "
            f"{stats['max_length']} tokens (prepared with --seq-length {stats['seq_length']}); "
            f"prepare it again with --seq-length {train.seq_length}")
    if first is not None and (stats["chat_format"]["template"], stats["chat_format"]["end_of_turn_id"]
                              ) != (first["template"], first["end_of_turn_id"]):
        raise ConfigError(f"{where}: prepared in another chat format than data.chat.prefixes[0]")


def _split(count: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) conversation indices, each sorted."""
    held_out = int(round(count * share))
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[:held_out]), np.sort(order[held_out:])


def resolve_chat_data(data: DataConfig, train: TrainConfig, vocab_size: Optional[int] = None,
                      with_validation: bool = True) -> ChatPlan:
    """Check the prepared files against the recipe and pack them; ConfigError naming the field."""
    chat = data.chat
    sources, chat_format = [], None
    for i, prefix in enumerate(chat.prefixes):
        where = f"data.chat.prefixes[{i}] '{prefix}'"
        stats = _read_stats(prefix, where)
        _check_stats(stats, where, data, train, vocab_size, chat_format)
        chat_format = chat_format or stats["chat_format"]
        lengths = sequence_lengths(prefix, where)
        if not np.array_equal(lengths, sequence_lengths(prefix + MASK_SUFFIX, where)):
            raise ConfigError(f"{where}: its ids and loss mask hold sequences of different lengths")
        valid, kept = _split(len(lengths), chat.valid_share, train.seed + i)
        if with_validation and not len(valid):
            raise ConfigError(f"data.chat.valid_share: {chat.valid_share} of the {len(lengths)} "
                              f"conversations of {where} is none; raise it or set "
                              "train.eval_interval=0")
        if not len(kept):
            raise ConfigError(f"data.chat.valid_share: {where} keeps no conversation to train on")
        name = Path(prefix).name
        sources.append(ChatSource(name, prefix, lengths, valid, kept, stats["trained_tokens"]))
    train_lengths = np.concatenate([s.lengths[s.train] for s in sources])
    valid_lengths = np.concatenate([s.lengths[s.valid] for s in sources])
    train_packing = pack_best_fit(train_lengths, train.seq_length)
    steps = train.steps
    if chat.epochs is not None:
        steps = math.ceil(chat.epochs * len(train_packing.packs) / train.global_batch_size)
    return ChatPlan(sources, train.seq_length, chat_format, train_packing,
                    pack_best_fit(valid_lengths, train.seq_length), train.global_batch_size, steps)


class IndexedConversations:
    """The training or the held-out conversations of a plan's sources, in packing order."""

    def __init__(self, sources: list[ChatSource], part: str):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        # Items are views of memory maps: the datasets live as long as this object.
        self.ids = [IndexedDataset(s.prefix) for s in sources]
        self.masks = [IndexedDataset(s.prefix + MASK_SUFFIX) for s in sources]
        self.members = [(i, int(doc)) for i, s in enumerate(sources) for doc in getattr(s, part)]

    def __len__(self) -> int:
        return len(self.members)

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, loss mask) of conversation ``index``."""
        source, doc = self.members[index]
        return self.ids[source][doc], self.masks[source][doc]


class PackedChatDataset:
    """Sequences of packed conversations. ``conversations.get(i)`` gives conversation i's ids and
    loss mask. With a ``seed`` (training), item ``i`` is in epoch ``i // packs``, whose order of
    packs is drawn from the seed and the epoch; without (validation), the packs in order, then
    empty ones up to ``length``."""

    def __init__(self, conversations, packing: Packing, seq_length: int, pad_id: int,
                 length: int, seed: Optional[int]):
        self.conversations = conversations
        self.packs = packing.packs
        self.seq_length = seq_length
        self.pad_id = pad_id
        self.length = length
        self.seed = seed
        self._epoch_order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def _pack_of(self, index: int) -> Optional[np.ndarray]:
        if self.seed is None:
            return self.packs[index] if index < len(self.packs) else None
        epoch, position = divmod(index, len(self.packs))
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch_order = (epoch, rng.permutation(len(self.packs)))
        return self.packs[self._epoch_order[1][position]]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import torch  # not at the top: the checks before the ranks start read this module

        if not 0 <= index < self.length:
            raise IndexError(index)
        pack = self._pack_of(index)
        seq = self.seq_length
        tokens = np.full(seq, self.pad_id, dtype=np.int64)
        labels = np.full(seq, self.pad_id, dtype=np.int64)
        loss_mask = np.zeros(seq, dtype=np.float32)
        position_ids = np.zeros(seq, dtype=np.int64)
        boundaries = [0]
        for member in ([] if pack is None else pack.tolist()):
            ids, trained = self.conversations.get(member)
            at, n = boundaries[-1], len(ids)
            tokens[at:at + n] = ids
            labels[at:at + n - 1] = ids[1:]
            loss_mask[at:at + n - 1] = trained[1:]
            position_ids[at:at + n] = np.arange(n)
            boundaries.append(at + n)
        if boundaries[-1] < seq:  # the padding is a sequence of its own, never trained
            position_ids[boundaries[-1]:] = np.arange(seq - boundaries[-1])
            boundaries.append(seq)
        return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
                "loss_mask": torch.from_numpy(loss_mask),
                "position_ids": torch.from_numpy(position_ids),
                "cu_seqlens": torch.tensor(boundaries, dtype=torch.int32)}


@dataclass
class ChatTrainingData:
    """What ``train/state.py`` holds as its data: the same fields as ``TrainingData``."""

    plan: ChatPlan
    train: PackedChatDataset
    valid: Optional[PackedChatDataset]
    valid_by_source: dict = field(default_factory=dict)

    @property
    def checkpoint_meta(self) -> dict:
        """Recorded in every checkpoint: what a chat export needs (``convert mcore-to-hf``)."""
        return {"chat": self.plan.chat_format}


def build_chat_training_data(data: DataConfig, train: TrainConfig, num_valid_samples: int,
                             plan: ChatPlan) -> ChatTrainingData:
    """The packed training set (``plan.steps`` global batches) and the validation window."""
    train_set = PackedChatDataset(IndexedConversations(plan.sources, "train"), plan.train_packing,
                                  train.seq_length, data.eod_token_id,
                                  plan.steps * train.global_batch_size, seed=train.seed)
    valid_set = None
    if num_valid_samples:
        valid_set = PackedChatDataset(IndexedConversations(plan.sources, "valid"),
                                      plan.valid_packing, train.seq_length, data.eod_token_id,
                                      num_valid_samples, seed=None)
    return ChatTrainingData(plan, train_set, valid_set)


def with_planned_steps(recipe):
    """``recipe`` with ``train.steps`` computed from ``data.chat.epochs`` and validated again, or
    ``recipe`` itself when the steps are given."""
    import dataclasses

    chat = recipe.data.chat
    if chat is None or chat.epochs is None:
        return recipe
    plan = resolve_chat_data(recipe.data, recipe.train, recipe.model.vocab_size,
                             with_validation=recipe.train.eval_interval > 0)
    train = dataclasses.replace(recipe.train, steps=plan.steps)
    return dataclasses.replace(recipe, train=train).validate()
