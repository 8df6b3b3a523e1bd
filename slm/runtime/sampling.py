"""Token sampling: pure functions over a frozen `SamplingParams`, with the RNG passed in.

The chain, in the order Hugging Face's logits processors apply it:

    logits ─► repetition penalty ─► temperature ─► top-k ─► top-p ─► min-p ─► categorical draw
                                    (0 => argmax, the rest is skipped)

- repetition penalty: CTRL, Keskar et al. 2019, "CTRL: A Conditional Transformer Language Model
  for Controllable Generation" (arXiv:1909.05858), sec. 4.1.
- top-k: Fan et al. 2018, "Hierarchical Neural Story Generation" (arXiv:1805.04833).
- top-p (nucleus): Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"
  (arXiv:1904.09751).
- min-p: Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM
  Outputs" (arXiv:2407.01082).

Each filter maps candidates `(ids, logits)` to a subset of them, so that after top-k the later
filters sort and exponentiate k values, not the whole vocabulary. The same seed gives the same
tokens: the only randomness is one `rng.random()` per sampled token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0         # 0 => greedy (argmax)
    top_k: int = 0                   # 0 => off
    top_p: float = 1.0               # 1 => off
    min_p: float = 0.0               # 0 => off
    repetition_penalty: float = 1.0  # 1 => off; > 1 discourages tokens already seen
    seed: int | None = None          # None => a fresh seed from the OS

    def __post_init__(self) -> None:
        validate(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def of(cls, source: object) -> "SamplingParams":
        """The fields read off any object that names them (CLI flags, a request body, chat settings):
        the one place that lists what a sampler takes."""
        return cls(**{name: getattr(source, name) for name in SAMPLING_FIELDS})


SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams))     # temperature, top_k, ..., seed


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate(params: SamplingParams) -> None:
    """Raise ValueError naming the first bad value and the range it must lie in."""
    p = params
    if not _is_number(p.temperature) or not (math.isfinite(p.temperature) and p.temperature >= 0):
        raise ValueError(
            f"temperature={p.temperature!r} is out of range; use temperature >= 0 (0 means greedy)"
        )
    if not _is_int(p.top_k) or p.top_k < 0:
        raise ValueError(f"top_k={p.top_k!r} is out of range; use an integer top_k >= 0 (0 means off)")
    if not _is_number(p.top_p) or not (0 < p.top_p <= 1):
        raise ValueError(f"top_p={p.top_p!r} is out of range; use 0 < top_p <= 1 (1 means off)")
    if not _is_number(p.min_p) or not (0 <= p.min_p <= 1):
        raise ValueError(f"min_p={p.min_p!r} is out of range; use 0 <= min_p <= 1 (0 means off)")
    if not _is_number(p.repetition_penalty) or not (
        math.isfinite(p.repetition_penalty) and p.repetition_penalty > 0
    ):
        raise ValueError(
            f"repetition_penalty={p.repetition_penalty!r} is out of range; "
            "use repetition_penalty > 0 (1 means off)"
        )
    if p.seed is not None and (not _is_int(p.seed) or p.seed < 0):
        raise ValueError(f"seed={p.seed!r} is out of range; use an integer seed >= 0, or None")


def make_rng(params: SamplingParams) -> np.random.Generator:
    """The generator `sample` draws from; the same seed reproduces a run."""
    return np.random.default_rng(params.seed)


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty on already-seen ids: positive logits are divided by it, negative multiplied.

    Returns a new array. `seen` may repeat ids: each is penalized once. Work is O(len(seen)).
    """
    out = logits.copy()
    picked = logits[seen]  # (len(seen),), read from the input so repeats write the same value
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def top_k_filter(ids: np.ndarray, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest logits (all of them if k >= len). O(len) via argpartition."""
    if k >= len(logits):
        return ids, logits
    keep = np.argpartition(logits, -k)[-k:]  # (k,), unordered
    return ids[keep], logits[keep]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def top_p_filter(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the smallest set of most-probable candidates whose probability mass reaches p."""
    order = np.argsort(-logits)  # most probable first; O(n log n), ~0.5 ms for a 49k vocabulary
    cumulative = np.cumsum(_softmax(logits[order]))
    n_keep = min(int(np.searchsorted(cumulative, p, side="left")) + 1, len(order))
    keep = order[:n_keep]
    return ids[keep], logits[keep]


def min_p_filter(ids: np.ndarray, logits: np.ndarray, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep candidates whose probability is at least min_p times the top probability."""
    keep = logits >= logits.max() + math.log(min_p)  # p_i >= min_p * p_max, in log space
    return ids[keep], logits[keep]


def categorical(ids: np.ndarray, logits: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one id with probability softmax(logits), using exactly one `rng.random()`."""
    cdf = np.cumsum(_softmax(logits))
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(i, len(ids) - 1)])


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The ids a non-greedy draw chooses from and their tempered, filtered logits."""
    ids = np.arange(len(logits))
    with np.errstate(over="ignore"):    # shifted to <= 0: under a tiny temperature -inf is the exact limit (p = 0)
        logits = (logits.astype(np.float64) - logits.max()) / params.temperature
    if params.top_k:
        ids, logits = top_k_filter(ids, logits, params.top_k)
    if params.top_p < 1.0:
        ids, logits = top_p_filter(ids, logits, params.top_p)
    if params.min_p > 0.0:
        ids, logits = min_p_filter(ids, logits, params.min_p)
    return ids, logits


def _penalised(logits: np.ndarray, params: SamplingParams, seen: np.ndarray | None) -> np.ndarray:
    if params.repetition_penalty != 1.0 and seen is not None and len(seen):
        return apply_repetition_penalty(logits, np.asarray(seen, dtype=np.intp), params.repetition_penalty)
    return logits


def sample(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
    seen: np.ndarray | None = None,
) -> int:
    """One token id from a 1-D array of logits over the vocabulary.

    `seen` holds the ids the repetition penalty applies to (e.g. prompt and generated tokens).
    The input array is never modified.
    """
    logits = _penalised(logits, params, seen)
    if params.greedy:
        return int(np.argmax(logits))
    return categorical(*candidates(logits, params), rng)


def accept_or_resample(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
    seen: np.ndarray | None,
    draft: int,
) -> int:
    """Speculative sampling for a drafted token (Leviathan et al. 2023, "Fast Inference from
    Transformers via Speculative Decoding", arXiv:2211.17192; a draft that is one fixed token):
    keep `draft` with probability p(draft), else draw from p with `draft` removed. The result is
    distributed exactly as `sample`'s; greedy returns the argmax, as `sample` does."""
    logits = _penalised(logits, params, seen)
    if params.greedy:
        return int(np.argmax(logits))
    ids, z = candidates(logits, params)
    hit = ids == draft
    if rng.random() < float(_softmax(z)[hit].sum()):
        return int(draft)
    return categorical(ids[~hit], z[~hit], rng)
