"""Conversations -> packs of at most ``capacity`` tokens, best-fit decreasing.

Longest first, each conversation goes into the open pack whose free space it fills most tightly,
or starts a new pack. Free space takes at most ``capacity + 1`` values, so the open packs are kept
in buckets by free space and the tightest one is found by bisection over the distinct free-space
values: O(n log capacity), a million conversations in seconds. The result depends only on the
lengths (ties broken by index), so every rank and every resumed run packs identically.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Packing:
    packs: list[np.ndarray]  # conversation indices per pack, in the order they were placed
    capacity: int
    tokens: int  # real tokens in all packs

    @property
    def efficiency(self) -> float:
        """Real tokens / all token slots (capacity x packs)."""
        return self.tokens / (self.capacity * len(self.packs)) if self.packs else 0.0


def pack_best_fit(lengths: np.ndarray, capacity: int) -> Packing:
    """Pack items of ``lengths`` (each in 1..capacity) into as few packs as best fit finds."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"lengths must lie in [1, {capacity}], got {lengths.min()}..{lengths.max()}")
    order = np.lexsort((np.arange(lengths.size), -lengths))  # longest first, then by index
    members: list[list[int]] = []
    by_free: dict[int, list[int]] = {}  # free space -> packs with exactly that much left
    free_values: list[int] = []  # sorted distinct keys of by_free
    for index in order.tolist():
        size = int(lengths[index])
        at = bisect.bisect_left(free_values, size)
        if at < len(free_values):
            free = free_values[at]
            pack = by_free[free].pop()
            if not by_free[free]:
                del by_free[free]
                free_values.pop(at)
        else:
            pack, free = len(members), capacity
            members.append([])
        members[pack].append(index)
        left = free - size
        if left > 0:
            if left not in by_free:
                by_free[left] = []
                bisect.insort(free_values, left)
            by_free[left].append(pack)
    return Packing([np.array(m, dtype=np.int64) for m in members], capacity, int(lengths.sum()))
