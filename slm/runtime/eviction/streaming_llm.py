from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slm.runtime.eviction.base import CacheView, Policy


@dataclass(frozen=True)
class StreamingLLM(Policy):
    """Attention sinks + recent window (Xiao et al. 2023, "Efficient Streaming Language Models with
    Attention Sinks"): keep the first `n_sink` tokens and the most recent ones; evict the oldest."""
    name = "streaming"
    n_sink: int = 4

    def score(self, view: CacheView) -> np.ndarray:
        s = view.positions.astype(np.float32)
        return np.where(view.positions < self.n_sink, np.inf, s)
