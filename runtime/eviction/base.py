"""What a policy sees: the cache's per-(layer, KV head, slot) statistics. A policy returns scores of
the same shape; the cache evicts the lowest-scoring slots of each (layer, KV head)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPECTRUM_HALF_LIVES = (4.0, 64.0, 256.0)   # queries: the cache's bank of attention-mass EMAs (`spectrum`)
OPENING = (4, 68)       # true positions: the conversation's opening after the 4 sinks (system prompt, first instruction)


@dataclass(frozen=True)
class CacheView:
    positions: np.ndarray       # int64 (L, H, n): true rotary position of each slot's token
    cumulative: np.ndarray      # float32 (L, H, n): attention mass received, summed over every query so far
    recent: np.ndarray          # float32 (L, H, n): the same, exponentially decayed (half-life ~ obs window)
    last: np.ndarray            # float32 (L, H, n): mass from the latest step's queries (per query)
    keys: Sequence[np.ndarray]  # per layer (H, n, head_dim): cached keys (after rotary), as floats
    next_position: int          # position the next token will take
    spectrum: np.ndarray | None = None  # float32 (S, L, H, n): EMAs of the mass at SPECTRUM_HALF_LIVES
    opening: np.ndarray | None = None   # float32 (L, H, n): share of its step's attention each token's step gave
                                        # to the opening (positions OPENING), per query


class Policy:
    """Subclasses are small frozen dataclasses with one method, `score`; higher = keep."""
    name = "base"
    needs_attention = False     # True: the engine runs the graph that outputs attention mass

    def score(self, view: CacheView) -> np.ndarray:
        raise NotImplementedError
