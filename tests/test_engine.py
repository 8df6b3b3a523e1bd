"""Engine behaviour on a real (tiny) package: stops, limits, cancel, reuse, seeds, errors."""
import threading

import numpy as np
import pytest

from slm.runtime import Engine, SamplingParams
from slm.core.errors import PromptTooLongError, SlmError


@pytest.fixture(scope="module")
def engine(tiny_package):
    return Engine(tiny_package, threads=1)


def _text(events):
    return "".join(e.text for e in events)


def test_events_are_typed_and_final_one_finishes(engine):
    events = list(engine.generate("Hello there", max_tokens=6))
    assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
    last = events[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.generated_tokens == len(events)
    assert last.prompt_tokens == len(engine.encode("Hello there"))
    assert last.ttft_s > 0
    assert last.kv.cached_tokens == last.prompt_tokens + last.generated_tokens - 1
    assert last.kv.capacity_tokens == engine.manifest.kv.default_capacity


def test_max_tokens_gives_length(engine):
    events = list(engine.generate("Count with me", max_tokens=5, raw=True))
    assert len(events) == 5 and events[-1].finish_reason == "length"


def test_stop_string_cuts_text(engine):
    full = _text(engine.generate("Tell me a story", max_tokens=30))
    assert len(full) > 12
    stop = full[8:12]
    cut = list(engine.generate("Tell me a story", max_tokens=30, stop=[stop]))
    assert cut[-1].finish_reason == "stop"
    assert _text(cut) == full[:full.index(stop)]


def test_cancel_stops_at_next_token(engine):
    cancel = threading.Event()
    events = []
    for e in engine.generate("Go on", max_tokens=200, cancel=cancel):
        events.append(e)
        if len(events) == 3:
            cancel.set()
    assert events[-1].finish_reason == "cancelled" and len(events) == 4



class _SetAfter(threading.Event):
    """An event that reads as set from its n-th check on (the cancel arriving mid-prefill)."""
    def __init__(self, n):
        super().__init__()
        self.checks, self.n = 0, n

    def is_set(self):
        self.checks += 1
        return self.checks >= self.n


def test_cancel_during_prefill_stops_between_chunks(tiny_package):
    engine = Engine(tiny_package, threads=1, prefill_chunk=8)
    ids = engine.encode("word " * 40, raw=True)
    assert len(ids) > 24
    cache = engine.new_cache()
    events = list(engine.generate("word " * 40, raw=True, max_tokens=5, cancel=_SetAfter(3), cache=cache))
    assert [(e.token, e.finish_reason, e.generated_tokens) for e in events] == [(None, "cancelled", 0)]
    assert cache.length == 16 and cache.history == ids[:16]        # two chunks fed, then the cancel
    # the same cache goes on from there: the next call prefills only the rest and answers
    fresh = [e.token for e in engine.generate("word " * 40, raw=True, max_tokens=5, cache=engine.new_cache())]
    resumed = [e.token for e in engine.generate("word " * 40, raw=True, max_tokens=5, cache=cache)]
    assert resumed == fresh

def test_prefix_reuse_gives_same_tokens_as_fresh_cache(engine):
    convo = [{"role": "user", "content": "first question"}]
    first = list(engine.generate(convo, max_tokens=8))
    convo += [{"role": "assistant", "content": _text(first)}, {"role": "user", "content": "second one"}]
    reused = [e.token for e in engine.generate(convo, max_tokens=8)]            # engine cache: prefix reused
    fresh = [e.token for e in engine.generate(convo, max_tokens=8, cache=engine.new_cache())]
    assert reused == fresh


def test_seed_reproduces_sampling(engine):
    p = SamplingParams(temperature=1.0, top_k=50, seed=7)
    a = [e.token for e in engine.generate("Once", params=p, max_tokens=12)]
    b = [e.token for e in engine.generate("Once", params=p, max_tokens=12)]
    c = [e.token for e in engine.generate("Once", params=SamplingParams(temperature=1.0, top_k=50, seed=8), max_tokens=12)]
    assert a == b and a != c


def test_prompt_over_budget_names_sizes(tiny_package):
    small = Engine(tiny_package, threads=1, kv_budget=32)
    with pytest.raises(PromptTooLongError, match=r"has \d+ tokens; .* at most 31 prompt tokens"):
        list(small.generate("word " * 100, raw=True))


def test_generation_stops_at_budget_with_length(tiny_package):
    small = Engine(tiny_package, threads=1, kv_budget=32)
    events = list(small.generate("a b c", raw=True, max_tokens=500))
    assert events[-1].finish_reason == "length"
    assert max(e.kv.cached_tokens for e in events) <= 32


@pytest.mark.parametrize("budget, message", [("lots", "not understood"), ("3", "at least 16 are needed"),
                                             ("1KiB", "holds 2 tokens")])
def test_bad_budget(tiny_package, budget, message):
    with pytest.raises(SlmError, match=message):
        Engine(tiny_package, kv_budget=budget)


def test_budget_in_bytes_is_converted_through_the_manifest(tiny_package):
    e = Engine(tiny_package, kv_budget="64KiB")
    per_token = e.manifest.kv.bytes_per_token(e.manifest.dims)
    assert e.capacity == 64 * 1024 // per_token
    assert e.new_cache().nbytes <= 64 * 1024


def test_decode_logits_buffer_is_reused_not_reallocated(engine):
    cache = engine.new_cache()
    engine.prefill(cache, [1, 2, 3])
    a = engine.decode_step(cache, 4)
    b = engine.decode_step(cache, 5)
    assert np.shares_memory(a, b)      # one fixed output buffer bound once


def test_bad_prefill_chunk_is_named(tiny_package):
    with pytest.raises(SlmError, match=r"prefill_chunk=0 must be at least 1 token"):
        Engine(tiny_package, threads=1, prefill_chunk=0)
