"""Prompt lookup decoding: the drafter, speculative sampling's acceptance rule, and the engine's
draft-verify-rewind loop on real packages (same tokens as plain decoding, fewer graph calls)."""
import numpy as np
import pytest

from slm.runtime import Engine, SamplingParams
from slm.runtime.lookup import PromptLookup
from slm.runtime.sampling import accept_or_resample, make_rng
from slm.core.errors import SlmError


def test_draft_follows_the_latest_match_of_the_longest_suffix():
    look = PromptLookup(max_draft=8)
    assert look.draft(np.array([1, 2, 3, 4, 5, 1, 2, 3])) == [4, 5, 1, 2, 3]
    assert look.draft(np.array([9, 2, 3, 7, 1, 2, 3])) == [7, 1, 2, 3]           # 3-gram misses, 2-gram (2, 3) hits
    assert look.draft(np.array([1, 2, 3, 4, 5, 6])) == []
    assert look.draft(np.array([5, 3, 4, 5])) == []                                 # one repeated token is not a cue
    # a loop of 3 tokens: the latest match with a whole draft after it, not the one 3 back
    assert PromptLookup(max_draft=4).draft(np.array([7, 8, 9] * 5)) == [7, 8, 9, 7]


def test_bad_lookup_settings_are_named():
    with pytest.raises(ValueError, match="min_ngram=4"):
        PromptLookup(max_ngram=3, min_ngram=4)


def test_accept_or_resample_is_distributed_as_the_model():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    params, rng = SamplingParams(temperature=1.0), make_rng(SamplingParams(seed=0))
    for draft in (0, 1, 3):
        draws = [accept_or_resample(np.log(p).astype(np.float32), params, rng, None, draft) for _ in range(20000)]
        freq = np.bincount(draws, minlength=4) / len(draws)
        assert np.abs(freq - p).max() < 0.015, (draft, freq)
    # a drafted token the filters drop is never kept; greedy is the argmax whatever the draft
    top2 = SamplingParams(temperature=1.0, top_k=2)
    assert 3 not in {accept_or_resample(np.log(p).astype(np.float32), top2, rng, None, 3) for _ in range(500)}
    assert accept_or_resample(np.log(p).astype(np.float32), SamplingParams(), rng, None, 2) == 0


class Counting(Engine):
    """An engine that counts its graph calls: one per decode step, one per verified draft."""
    calls = 0

    def decode_step(self, *a, **k):
        self.calls += 1
        return super().decode_step(*a, **k)

    def verify(self, *a, **k):
        self.calls += 1
        return super().verify(*a, **k)


REPEATING = "one two three four five six seven eight. one two three four five six seven eight. one two three"


@pytest.mark.parametrize("budget", [None, 192])
def test_greedy_lookup_gives_plain_decodings_tokens_in_fewer_calls(tiny_package, budget):
    runs = {}
    for lookup in (0, 4):
        engine = Counting(tiny_package, threads=1, kv_budget=budget, lookup=lookup)
        events = list(engine.generate(REPEATING, raw=True, max_tokens=300))
        runs[lookup] = ([e.token for e in events], events[-1].finish_reason, engine.calls)
        assert max(e.kv.cached_tokens for e in events) <= engine.capacity
    assert runs[4][:2] == runs[0][:2]                     # same tokens, same finish ("length" at the budget)
    assert runs[4][2] < runs[0][2], runs                  # drafts were accepted


def test_lookup_keeps_the_budget_under_streaming_eviction(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_budget=48, kv_policy="streaming", lookup=6)
    events = list(engine.generate(REPEATING, raw=True, max_tokens=200, ignore_eos=True))
    assert len(events) == 200 and max(e.kv.cached_tokens for e in events) <= 48
    assert events[-1].kv.evicted_tokens > 0


def test_lookup_with_sampling_is_seeded(tiny_package):
    engine = Engine(tiny_package, threads=1, lookup=4)
    def run(**change) -> list[int]:
        params = SamplingParams(**{"temperature": 0.8, "top_p": 0.95, "repetition_penalty": 1.1, "seed": 3} | change)
        return [e.token for e in engine.generate(REPEATING, raw=True, max_tokens=60, params=params,
                                                 cache=engine.new_cache(), ignore_eos=True)]
    a = run()
    assert a == run() and len(a) == 60
    # a random tiny model sampled at 0.8 for 60 tokens: another seed, or greedy, cannot give the same tokens
    assert run(seed=4) != a and run(temperature=0.0) != a


def test_lookup_with_a_statistics_policy_is_refused(tiny_package):
    with pytest.raises(SlmError, match=r"lookup=4 needs .* \(none, streaming, knorm\); kv_policy is 'h2o'"):
        Engine(tiny_package, threads=1, kv_policy="h2o", lookup=4)
    with pytest.raises(SlmError, match="lookup=-1 must be 0"):
        Engine(tiny_package, threads=1, lookup=-1)


def test_real_model_copies_with_fewer_calls(default_fp32_package):
    """SmolLM2 asked to repeat a sentence: lookup drafts it from the prompt and the graph accepts it
    in a few wide calls, with the tokens of plain decoding. On the fp32 package, whose kernels are
    exact enough that its greedy reply is the same on every CPU. (On int4 with int8 activations the
    one-token and multi-token MatMulNBits kernels round differently, so near-ties can fall either
    way, and which of them does depends on the CPU's kernel: no int4 continuation is asserted.)"""
    sentence = "The quick brown fox jumps over the lazy dog"
    prompt = f"Repeat the following sentence exactly.\n\n{sentence} while the farmer counts his seven sheep."
    calls, tokens = {}, {}
    for lookup in (0, 8):
        engine = Counting(default_fp32_package, threads=2, lookup=lookup)
        events = list(engine.generate(prompt, max_tokens=48))
        assert "".join(e.text for e in events).startswith(sentence), lookup
        calls[lookup], tokens[lookup] = engine.calls / len(events), [e.token for e in events]
    assert tokens[8] == tokens[0]
    assert calls[8] < 0.6 * calls[0], calls


def test_a_chat_continued_on_the_engines_own_cache_matches_plain_decoding(tiny_package):
    """Turns that end mid-way through an accepted draft leave extra tokens in the cache; the next
    turn must rewind them (prefix reuse), so a lookup chat answers as a plain one, turn by turn."""
    replies = {}
    for lookup in (0, 4):
        engine = Engine(tiny_package, threads=1, lookup=lookup)
        messages, out = [{"role": "user", "content": REPEATING}], []
        for turn in range(3):
            text = "".join(e.text for e in engine.generate(messages, max_tokens=23 + 7 * turn))
            out.append(text)
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"again {turn}"}]
        replies[lookup] = out
    assert replies[4] == replies[0]


def test_server_with_lookup_streams_the_engines_answer_in_fewer_calls(default_gguf_package):
    """A real uvicorn on loopback serving SmolLM2 with lookup: the streamed reply is what the same
    engine answers directly, and the copy it makes took fewer graph calls than tokens."""
    import httpx
    import openai

    from slm.runtime.serve import BackgroundServer, create_app

    messages = [{"role": "user", "content": "Repeat the following sentence exactly.\n\n"
                 "The quick brown fox jumps over the lazy dog while the farmer counts his seven sheep."}]
    direct = Engine(default_gguf_package, threads=2, lookup=8)
    events = list(direct.generate(messages, max_tokens=40, cache=direct.new_cache()))
    engine = Counting(default_gguf_package, threads=2, lookup=8)
    with BackgroundServer(create_app(engine, model_id="smollm2", max_concurrent=1, max_queue=2)) as server, \
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60,
                          http_client=httpx.Client(trust_env=False)) as client:
        chunks = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=40, temperature=0,
                                                stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == "".join(e.text for e in events)
    assert engine.calls < 0.6 * len(events), (engine.calls, len(events))
