"""Prompt lookup decoding (Saxena 2023, "Prompt Lookup Decoding", github.com/apoorvumang/prompt-lookup-decoding):
speculative decoding whose draft model is the conversation itself.

    draft = the tokens that followed the latest earlier occurrence of the newest n-gram

The engine feeds [last token] + draft in one graph call, keeps the drafted tokens the model would
have chosen itself (greedy: its argmax; sampling: `accept_or_resample`) and rewinds the rest, so the
output is the same as plain decoding's (greedy) or distributed as it (sampling). It pays where the
answer copies from its context (quoting, summarising, editing code, the loops of a small model) and
costs one wider graph call where a draft is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class PromptLookup:
    max_draft: int = 8      # tokens drafted per step
    max_ngram: int = 3      # the longest suffix looked up first
    min_ngram: int = 2      # a single repeated token is too weak a cue

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram or self.max_draft < 1:
            raise ValueError(f"PromptLookup(max_draft={self.max_draft}, max_ngram={self.max_ngram}, "
                             f"min_ngram={self.min_ngram}) needs max_draft >= 1 and 1 <= min_ngram <= max_ngram")

    def draft(self, tokens: np.ndarray) -> list[int]:
        """Up to max_draft tokens that followed the latest earlier match of the longest suffix
        of `tokens` (max_ngram down to min_ngram tokens); [] when none matches. The latest match
        with a whole draft after it wins over a later one cut short by the end (in a loop of p
        tokens the latest match is p back and would draft only p)."""
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(tokens) <= n:
                continue
            # windows of tokens[:-1] end at most one before the last token: each has a successor
            hits = np.flatnonzero((sliding_window_view(tokens[:-1], n) == tokens[-n:]).all(axis=1))
            if len(hits):
                whole = hits[hits + n + self.max_draft <= len(tokens)]
                start = int(whole[-1] if len(whole) else hits[-1]) + n
                return tokens[start:start + self.max_draft].tolist()
        return []
