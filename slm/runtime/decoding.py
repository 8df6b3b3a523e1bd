"""Greedy decoding and teacher forcing on token ids, below `Engine.generate` (no template, sampling
or detokenising): what evaluations, evolution probes and benchmarks run after a prefill.

    logits = engine.prefill(cache, prompt_ids)
    ids = greedy(engine, cache, logits, 32, stop_ids=engine.eos_ids)
    nll = -log_probs(engine, cache, engine.prefill(other, text[:1]), text[1:])
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from slm.runtime.kv_cache import EvictionConfig


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    """log p(token) from one row of logits, in float64 (a stable log-sum-exp)."""
    z = np.asarray(logits, np.float64).reshape(-1)
    top = z.max()
    return float(z[token] - (top + np.log(np.exp(z - top).sum())))


def greedy(engine, cache, logits: np.ndarray, max_tokens: int, eviction: EvictionConfig | None = None,
           stop_ids: Collection[int] = ()) -> list[int]:
    """Up to `max_tokens` argmax tokens after `logits` (the last prefilled position's), each fed to
    the cache as it is chosen; a token in `stop_ids` ends it, unfed and not returned."""
    ids = []
    for _ in range(max_tokens):
        token = int(np.argmax(logits))
        if token in stop_ids:
            break
        ids.append(token)
        logits = engine.decode_step(cache, token, eviction)
    return ids


def log_probs(engine, cache, logits: np.ndarray, tokens: Sequence[int],
              eviction: EvictionConfig | None = None) -> np.ndarray:
    """Teacher forcing: log p of each of `tokens` in turn, after `logits` and the tokens before it;
    every token but the last is fed to the cache. (len(tokens),) float64."""
    out = np.empty(len(tokens), np.float64)
    for i, token in enumerate(tokens):
        out[i] = log_softmax_at(logits, token)
        if i + 1 < len(tokens):
            logits = engine.decode_step(cache, token, eviction)
    return out
