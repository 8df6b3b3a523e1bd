from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slm.runtime.eviction.base import RECENT, CacheView, Policy


@dataclass(frozen=True)
class SnapKV(Policy):
    """SnapKV (Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation"): the
    attention of an observation window of recent queries, average-pooled over neighbouring positions
    (kernel `kernel`) so that whole phrases survive together."""
    name = "snapkv"
    statistics = (RECENT,)
    kernel: int = 7

    def score(self, view: CacheView) -> np.ndarray:
        x = view.recent
        pad = self.kernel // 2
        c = np.cumsum(np.pad(x, [(0, 0), (0, 0), (pad + 1, pad)], mode="edge"), axis=-1)
        return (c[..., self.kernel:] - c[..., :-self.kernel]) / self.kernel
