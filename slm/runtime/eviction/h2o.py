from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slm.runtime.eviction.base import CUMULATIVE, CacheView, Policy


@dataclass(frozen=True)
class H2O(Policy):
    """Heavy-Hitter Oracle (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative
    Inference of Large Language Models"): keep the tokens with the largest accumulated attention
    (the recent window is kept by the cache)."""
    name = "h2o"
    statistics = (CUMULATIVE,)

    def score(self, view: CacheView) -> np.ndarray:
        return view.cumulative
