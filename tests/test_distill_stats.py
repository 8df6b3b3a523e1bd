"""The paired bootstrap behind the step-by-step − standard intervals."""
import pytest

from slm.distill.stats import paired_bootstrap
from slm.core.errors import SlmError


def test_paired_bootstrap_interval_brackets_the_difference():
    a = {f"t{i}": float(i % 10 < 6) for i in range(200)}         # 60% right
    b = {f"t{i}": float(i % 10 < 4) for i in range(200)}         # 40% right, always a subset of a's
    d = paired_bootstrap(a, b, resamples=2000)
    assert d.mean == pytest.approx(20.0) and d.low < 20.0 < d.high and d.inputs == 200
    assert 13 < d.low and d.high < 27                            # sd of the mean diff is ~2.8 points
    same = paired_bootstrap(a, a, resamples=500)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)   # paired: identical students differ by nothing


def test_paired_bootstrap_needs_the_same_inputs():
    with pytest.raises(SlmError, match="same test inputs on both sides; got 2 and 1 inputs, 1 not shared"):
        paired_bootstrap({"a": 1.0, "b": 0.0}, {"a": 1.0})
