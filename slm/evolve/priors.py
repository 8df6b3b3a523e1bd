"""Where the evolution of a NAMM scorer starts: small random weights and, with a prior, skip weights
that rank like a known statistic (slm.runtime.eviction.namm holds the scorer and its features)."""
from __future__ import annotations

import numpy as np

from slm.runtime.eviction.namm import D_HIDDEN, FEATURES, BackwardAttentionMemory

PRIORS = ("h2o", "opening") + FEATURES


def initial_vector(seed: int, prior: str | None = "log_mass_ema16") -> np.ndarray:
    """Where evolution starts: small random weights (seeded) and, with `prior`, skip weights that rank
    like a known statistic: a feature's name (a weight of 1 on it; `log_mass_ema16` = `recent`,
    SnapKV's signal) or "h2o", the attention accumulated since the token arrived (H2O's score):
    4 * log_mass_per_query + 8 * log_age = log(n * cumulative / age) + log(1 + age) ~ log(n * cumulative),
    i.e. weights 1 and 2 up to the scale, which a ranking ignores; or "opening", the mean attention per
    query plus twice what the token's step read in the conversation's opening (1 and 2 on
    log_mass_per_query and log_opening: the best of a small grid on the training probes, docs/NAMM.md)."""
    if prior and prior not in PRIORS:
        raise ValueError(f"prior {prior!r} is unknown; accepted: '' (none), h2o, opening or a feature: {', '.join(FEATURES)}")
    rng = np.random.default_rng(seed)
    parts = []
    for name, shape in BackwardAttentionMemory.SHAPES.items():
        fan_in = shape[0] if len(shape) == 2 else D_HIDDEN
        scale = 0.0 if name in ("be", "b1", "w_skip") else 1 / np.sqrt(fan_in)
        parts.append(rng.normal(0, scale, shape).ravel() * (0.1 if name == "w2" else 1.0))
    theta = np.concatenate(parts).astype(np.float32)
    offset = BackwardAttentionMemory.size() - len(FEATURES)
    if prior == "h2o":
        theta[offset + FEATURES.index("log_mass_per_query")] = 1.0
        theta[offset + FEATURES.index("log_age")] = 2.0
    elif prior == "opening":
        theta[offset + FEATURES.index("log_mass_per_query")] = 1.0
        theta[offset + FEATURES.index("log_opening")] = 2.0
    elif prior:
        theta[offset + FEATURES.index(prior)] = 1.0
    return theta
