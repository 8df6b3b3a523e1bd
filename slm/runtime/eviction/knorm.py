from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slm.runtime.eviction.base import CacheView, Policy


@dataclass(frozen=True)
class KeyNorm(Policy):
    """Key norm (Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
    Compression"; kvpress KnormPress): keys with a low L2 norm draw the most attention; evict high norms."""
    name = "knorm"

    def score(self, view: CacheView) -> np.ndarray:
        return -np.stack([np.linalg.norm(k, axis=-1) for k in view.keys])
