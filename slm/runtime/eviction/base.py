"""What a policy sees: the cache's per-(layer, KV head, slot) statistics. A policy returns scores of
the same shape; the cache evicts the lowest-scoring slots of each (layer, KV head).

A policy names the statistics it reads (`statistics`), and the cache keeps only those: each is a
`Statistic`, a (layer, KV head, slot) array (with a leading bank axis for `bank` > 0) and the rule
that folds a step's attention mass into it. The three every attention policy shares are here; a
policy with statistics of its own defines them beside itself (NAMM's spectrum and opening)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

RECENT_HALF_LIFE = 16           # queries: the observation window of `recent` statistics


@dataclass(frozen=True)
class Statistic:
    """One per-slot statistic. `fold(value, mass, n_queries, positions)` updates `value`, the
    statistic's first `n` slots ((bank,) + (L, H, n)), in place from `mass` (L, H, n): the attention
    the step's `n_queries` queries (the last n_queries slots) gave each slot, summed over them."""
    name: str
    fold: Callable[[np.ndarray, np.ndarray, int, np.ndarray], None] = field(repr=False)
    bank: int = 0                   # > 0: a bank of this many arrays (a leading axis)


def _fold_cumulative(value, mass, n_queries, positions):
    value += mass


def _fold_recent(value, mass, n_queries, positions):
    value *= 0.5 ** (n_queries / RECENT_HALF_LIFE)
    value += mass / n_queries


def _fold_last(value, mass, n_queries, positions):
    value[...] = mass / n_queries


CUMULATIVE = Statistic("cumulative", _fold_cumulative)   # attention received, summed over every query so far
RECENT = Statistic("recent", _fold_recent)               # the same, exponentially decayed (half-life ~ obs window)
LAST = Statistic("last", _fold_last)                     # mass from the latest step's queries (per query)


@dataclass(frozen=True)
class CacheView:
    positions: np.ndarray       # int64 (L, H, n): true rotary position of each slot's token
    keys: Sequence[np.ndarray]  # per layer (H, n, head_dim): cached keys (after rotary), as floats
    next_position: int          # position the next token will take
    stats: Mapping[str, np.ndarray] = field(default_factory=dict)   # name -> the first n slots of a Statistic

    @property
    def cumulative(self) -> np.ndarray:     # float32 (L, H, n)
        return self.stats["cumulative"]

    @property
    def recent(self) -> np.ndarray:         # float32 (L, H, n)
        return self.stats["recent"]

    @property
    def last(self) -> np.ndarray:           # float32 (L, H, n)
        return self.stats["last"]


class Policy:
    """Subclasses are small frozen dataclasses with one method, `score`; higher = keep."""
    name = "base"
    statistics: ClassVar[tuple[Statistic, ...]] = ()    # what `score` reads; the cache keeps these

    @property
    def needs_attention(self) -> bool:
        """True: the engine runs the graph that outputs attention mass."""
        return bool(self.statistics)

    def score(self, view: CacheView) -> np.ndarray:
        raise NotImplementedError
