"""GET /metrics: the server's counters in Prometheus' text format, from a registry the app owns.

    slm_requests_total{endpoint,status}      every answered request, by HTTP status
    slm_prompt_tokens_total, slm_completion_tokens_total
    slm_queue_depth, slm_slots_busy          requests waiting for a slot; slots generating now
    slm_time_to_first_token_seconds          histogram, one observation per generation
    slm_time_per_output_token_seconds        histogram, one observation per token after the first
    slm_kv_evicted_tokens_total              tokens the KV policy evicted

One `Metrics` per app (no process-wide registry), so two servers in one process count apart.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from slm.runtime.events import GenerationEvent

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class Metrics:
    def __init__(self, *, queue_depth: Callable[[], int], slots_busy: Callable[[], int]):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("slm_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("slm_prompt_tokens", "prompt tokens of finished generations", registry=r)
        self.completion_tokens = Counter("slm_completion_tokens", "tokens generated", registry=r)
        Gauge("slm_queue_depth", "requests waiting for a generation slot", registry=r).set_function(queue_depth)
        Gauge("slm_slots_busy", "generation slots in use", registry=r).set_function(slots_busy)
        self.ttft = Histogram("slm_time_to_first_token_seconds", "from the request reaching the engine to its "
                              "first token", buckets=TTFT_BUCKETS, registry=r)
        self.token_latency = Histogram("slm_time_per_output_token_seconds", "time between consecutive tokens",
                                       buckets=TOKEN_BUCKETS, registry=r)
        self.kv_evicted = Counter("slm_kv_evicted_tokens", "tokens evicted from KV caches", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch(self, evicted_before: int) -> GenerationWatch:
        return GenerationWatch(self, evicted_before)


class GenerationWatch:
    """Observes one generation's events on its worker thread (prometheus_client is thread-safe)."""

    def __init__(self, metrics: Metrics, evicted_before: int):
        self.metrics, self.evicted_before = metrics, evicted_before
        self.last_t: float | None = None

    def see(self, event: GenerationEvent) -> None:
        now = time.perf_counter()
        if self.last_t is None:
            if event.token is not None:
                self.metrics.ttft.observe(event.ttft_s)
        else:
            self.metrics.token_latency.observe(now - self.last_t)
        self.last_t = now
        if event.finish_reason is not None:
            m = self.metrics
            m.prompt_tokens.inc(event.prompt_tokens)
            m.completion_tokens.inc(event.generated_tokens)
            # the cache's count restarts when the slot's cache is reset for a new conversation
            evicted = event.kv.evicted_tokens
            m.kv_evicted.inc(evicted - self.evicted_before if evicted >= self.evicted_before else evicted)
