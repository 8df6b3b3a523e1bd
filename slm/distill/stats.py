"""Paired bootstrap for the difference of two students' accuracies on the same test inputs.

Each input is scored by both students (per student, the mean correctness over its seeds), and the
inputs are resampled with replacement: the 2.5th and 97.5th percentiles of the resampled mean
differences are the 95% interval (Efron & Tibshirani, 1993; the test-set resampling of Koehn, 2004).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from slm.core.errors import SlmError


@dataclass(frozen=True)
class Difference:
    mean: float     # accuracy of a minus accuracy of b, in points (0..100)
    low: float      # 95% interval
    high: float
    inputs: int

    def line(self) -> str:
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def paired_bootstrap(a: dict[str, float], b: dict[str, float], *, resamples: int = 10_000, seed: int = 0,
                     ) -> Difference:
    """`a` and `b` map each test input's id to its correctness (0..1, averaged over seeds)."""
    if set(a) != set(b) or not a:
        raise SlmError(f"a paired bootstrap needs the same test inputs on both sides; got {len(a)} and {len(b)} "
                       f"inputs, {len(set(a) ^ set(b))} not shared")
    ids = sorted(a)
    diffs = [a[i] - b[i] for i in ids]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    point = sum(diffs) / n
    return Difference(mean=100 * point, low=100 * means[int(0.025 * resamples)],
                      high=100 * means[int(0.975 * resamples) - 1], inputs=n)
