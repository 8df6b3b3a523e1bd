"""The one event type that `Engine.generate` yields; the TUI and the server consume only this."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KVStats:
    """State of one KV cache after a step."""
    cached_tokens: int      # tokens held in the cache now
    capacity_tokens: int    # slots in the pre-allocated buffer (the budget, in tokens)
    evicted_tokens: int     # tokens evicted so far in this cache's life
    kv_bytes: int           # bytes of the pre-allocated K and V buffers, all layers
    policy: str             # eviction policy name ("none", "h2o", ...)


@dataclass(frozen=True)
class GenerationEvent:
    """One step of generation. The last event has `finish_reason` set."""
    text: str                   # new text since the previous event ("" while a UTF-8 char is incomplete)
    token: int | None           # token sampled at this step; None on a final flush-only event
    finish_reason: str | None   # None while generating; "stop" | "length" | "cancelled" at the end
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float               # seconds from the call to the first sampled token
    tokens_per_s: float         # decode speed so far (tokens after the first / their time)
    kv: KVStats
