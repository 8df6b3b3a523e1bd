from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slm.runtime.eviction.base import LAST, CacheView, Policy


@dataclass(frozen=True)
class TOVA(Policy):
    """Token Omission Via Attention (Oren et al. 2024, "Transformers are Multi-State RNNs"): evict the
    token the current query attends to least."""
    name = "tova"
    statistics = (LAST,)

    def score(self, view: CacheView) -> np.ndarray:
        return view.last
