"""Sampling: each filter on small hand-made arrays, greedy, reproducibility, validation."""
from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from slm.runtime.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    categorical,
    make_rng,
    min_p_filter,
    sample,
    top_k_filter,
    top_p_filter,
)

REPO = Path(__file__).resolve().parents[1]


def logits_of(probs: list[float]) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float32))


def draws(logits: np.ndarray, params: SamplingParams, n: int, seen=None) -> Counter:
    rng = make_rng(params)
    return Counter(sample(logits, params, rng, seen) for _ in range(n))


# --- greedy --------------------------------------------------------------------------------------

def test_greedy_is_argmax_and_ignores_rng():
    logits = np.array([0.1, 2.5, -1.0, 2.4], dtype=np.float32)
    params = SamplingParams()
    assert sample(logits, params, np.random.default_rng(0)) == 1
    assert sample(logits, params, np.random.default_rng(123)) == 1


def test_greedy_returns_python_int_and_leaves_logits_untouched():
    logits = np.array([3.0, 1.0, 2.0], dtype=np.float32)
    before = logits.copy()
    token = sample(logits, SamplingParams(repetition_penalty=2.0), make_rng(SamplingParams()), np.array([0]))
    assert type(token) is int
    np.testing.assert_array_equal(logits, before)


# --- repetition penalty ---------------------------------------------------------------------------

def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([4.0, -2.0, 1.0, 3.0], dtype=np.float32)
    out = apply_repetition_penalty(logits, np.array([0, 1]), 2.0)
    np.testing.assert_allclose(out, [2.0, -4.0, 1.0, 3.0])


def test_repetition_penalty_counts_repeated_ids_once():
    logits = np.array([4.0, -2.0, 1.0], dtype=np.float32)
    out = apply_repetition_penalty(logits, np.array([0, 0, 0, 1, 1]), 2.0)
    np.testing.assert_allclose(out, [2.0, -4.0, 1.0])


def test_repetition_penalty_changes_the_greedy_choice():
    logits = np.array([4.0, 3.0, 0.0], dtype=np.float32)
    assert sample(logits, SamplingParams(), make_rng(SamplingParams())) == 0
    penalized = SamplingParams(repetition_penalty=2.0)
    assert sample(logits, penalized, make_rng(penalized), seen=np.array([0])) == 1
    assert sample(logits, penalized, make_rng(penalized), seen=np.array([], dtype=np.int64)) == 0
    assert sample(logits, penalized, make_rng(penalized), seen=None) == 0


# --- top-k ----------------------------------------------------------------------------------------

def test_top_k_keeps_the_k_largest():
    logits = np.array([0.5, 3.0, -1.0, 2.0, 1.0], dtype=np.float32)
    ids, kept = top_k_filter(np.arange(5), logits, 2)
    assert sorted(ids.tolist()) == [1, 3]
    assert sorted(kept.tolist()) == [2.0, 3.0]


def test_top_k_larger_than_vocab_keeps_everything():
    logits = np.array([0.5, 3.0, -1.0], dtype=np.float32)
    ids, _ = top_k_filter(np.arange(3), logits, 10)
    assert sorted(ids.tolist()) == [0, 1, 2]


def test_top_k_one_is_greedy_at_any_temperature():
    logits = np.array([0.0, 0.1, 0.2, 0.15], dtype=np.float32)
    params = SamplingParams(temperature=5.0, top_k=1, seed=0)
    assert set(draws(logits, params, 50)) == {2}


def test_top_k_samples_only_from_the_k_best():
    logits = logits_of([0.3, 0.05, 0.3, 0.05, 0.3])
    params = SamplingParams(temperature=1.0, top_k=3, seed=1)
    counts = draws(logits, params, 600)
    assert set(counts) == {0, 2, 4}


# --- top-p ----------------------------------------------------------------------------------------

def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = logits_of([0.1, 0.5, 0.25, 0.15])
    ids, _ = top_p_filter(np.arange(4), logits, 0.6)  # 0.5 < 0.6 <= 0.5 + 0.25
    assert ids.tolist() == [1, 2]
    ids, _ = top_p_filter(np.arange(4), logits, 0.4)  # the top token alone reaches it
    assert ids.tolist() == [1]
    ids, _ = top_p_filter(np.arange(4), logits, 0.95)
    assert ids.tolist() == [1, 2, 3, 0]


def test_top_p_renormalizes_over_the_survivors_of_top_k():
    # After top_k=2 the survivors have probabilities 0.4/0.7 and 0.3/0.7 = 0.571 and 0.429, so
    # top_p=0.5 keeps only the first; without top_k the same top_p would keep two tokens.
    logits = logits_of([0.4, 0.3, 0.2, 0.1])
    both = SamplingParams(temperature=1.0, top_k=2, top_p=0.5, seed=3)
    assert set(draws(logits, both, 200)) == {0}
    only_p = SamplingParams(temperature=1.0, top_p=0.5, seed=3)
    assert set(draws(logits, only_p, 400)) == {0, 1}


# --- min-p ----------------------------------------------------------------------------------------

def test_min_p_keeps_tokens_above_a_fraction_of_the_top_probability():
    logits = logits_of([0.5, 0.2, 0.04, 0.26])
    ids, _ = min_p_filter(np.arange(4), logits, 0.1)  # threshold 0.05
    assert sorted(ids.tolist()) == [0, 1, 3]
    ids, _ = min_p_filter(np.arange(4), logits, 0.5)  # threshold 0.25
    assert sorted(ids.tolist()) == [0, 3]
    ids, _ = min_p_filter(np.arange(4), logits, 1.0)
    assert ids.tolist() == [0]


def test_min_p_applies_after_temperature():
    # At temperature 1, p_2/p_0 = 0.04/0.5 = 0.08 < 0.25: token 2 is cut. At temperature 2 the
    # ratio becomes sqrt(0.08) = 0.283 > 0.25: token 2 survives.
    logits = logits_of([0.5, 0.46, 0.04])
    cold = SamplingParams(temperature=1.0, min_p=0.25, seed=5)
    assert set(draws(logits, cold, 400)) == {0, 1}
    hot = SamplingParams(temperature=2.0, min_p=0.25, seed=5)
    assert set(draws(logits, hot, 400)) == {0, 1, 2}


# --- temperature and the categorical draw --------------------------------------------------------

def test_categorical_follows_the_distribution():
    logits = logits_of([0.7, 0.2, 0.1])
    rng = np.random.default_rng(7)
    counts = Counter(categorical(np.arange(3), logits, rng) for _ in range(5000))
    assert abs(counts[0] / 5000 - 0.7) < 0.03
    assert abs(counts[1] / 5000 - 0.2) < 0.03
    assert abs(counts[2] / 5000 - 0.1) < 0.03


def test_categorical_never_draws_a_zero_probability_token():
    logits = np.array([-np.inf, 0.0, -np.inf, 0.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert {categorical(np.arange(4), logits, rng) for _ in range(300)} == {1, 3}


def test_categorical_maps_back_to_the_given_ids():
    rng = np.random.default_rng(0)
    ids = np.array([17, 42])
    logits = np.array([-np.inf, 1.0])
    assert categorical(ids, logits, rng) == 42


def test_low_temperature_concentrates_and_high_temperature_flattens():
    logits = logits_of([0.6, 0.4])
    cold = draws(logits, SamplingParams(temperature=0.01, seed=2), 400)  # p_1/p_0 = (2/3)**100
    assert cold[0] == 400
    hot = draws(logits, SamplingParams(temperature=100.0, seed=2), 2000)
    assert abs(hot[0] / 2000 - 0.5) < 0.05


def test_tiny_temperature_does_not_overflow():
    logits = np.array([30000.0, 29999.0, -30000.0], dtype=np.float32)
    params = SamplingParams(temperature=1e-6, seed=0)
    assert sample(logits, params, make_rng(params)) == 0


# --- reproducibility ------------------------------------------------------------------------------

def test_same_seed_same_tokens_and_different_seed_different_tokens():
    logits = np.random.default_rng(99).normal(size=1000).astype(np.float32)

    def run(seed: int) -> list[int]:
        params = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, min_p=0.01, seed=seed)
        rng = make_rng(params)
        return [sample(logits, params, rng) for _ in range(64)]

    assert run(11) == run(11)
    assert run(11) != run(12)


# --- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature=-0.1 is out of range; use temperature >= 0"),
        ({"temperature": math.nan}, "temperature=nan is out of range"),
        ({"temperature": math.inf}, "temperature=inf is out of range"),
        ({"top_k": -1}, "top_k=-1 is out of range; use an integer top_k >= 0"),
        ({"top_k": 2.5}, "top_k=2.5 is out of range"),
        ({"top_k": True}, "top_k=True is out of range"),
        ({"top_p": 1.5}, "top_p=1.5 is out of range; use 0 < top_p <= 1"),
        ({"top_p": 0.0}, "top_p=0.0 is out of range; use 0 < top_p <= 1"),
        ({"min_p": -0.2}, "min_p=-0.2 is out of range; use 0 <= min_p <= 1"),
        ({"min_p": 1.01}, "min_p=1.01 is out of range"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0 is out of range; use repetition_penalty > 0"),
        ({"repetition_penalty": "1.1"}, "repetition_penalty='1.1' is out of range"),
        ({"seed": -3}, "seed=-3 is out of range; use an integer seed >= 0, or None"),
        ({"seed": 1.0}, "seed=1.0 is out of range"),
    ],
)
def test_invalid_params_name_the_value_and_the_range(kwargs, message):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    assert message in str(err.value)


def test_valid_edges_are_accepted():
    SamplingParams(temperature=0, top_k=0, top_p=1, min_p=0, repetition_penalty=1, seed=0)
    SamplingParams(temperature=2.0, top_k=1, top_p=1e-9, min_p=1.0, repetition_penalty=0.5, seed=None)


def test_params_are_frozen():
    params = SamplingParams()
    with pytest.raises(AttributeError):
        params.temperature = 1.0  # type: ignore[misc]


def test_module_imports_neither_torch_nor_transformers():
    code = (
        "import sys, slm.runtime.sampling; "
        "bad = {'torch', 'transformers', 'onnx'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
