"""The KV budget on a real tiny package: never exceeded, invisible when large enough, positions right."""
from __future__ import annotations

import numpy as np
import pytest

from slm.runtime import Engine
from slm.runtime.eviction import POLICIES
from slm.core.errors import BudgetExceededError, PromptTooLongError

EVICTING = [p for p in POLICIES if p not in ("none", "namm")]   # namm needs an evolved scorer: tests/test_namm.py


@pytest.mark.parametrize("policy", EVICTING)
def test_budget_never_exceeded_over_a_long_conversation(tiny_package, policy):
    engine = Engine(tiny_package, threads=1, kv_budget=48, kv_policy=policy, evict_chunk=6, keep_recent=4)
    cache = engine.cache
    shapes = {k.shape for k in cache.keys + cache.values}
    assert shapes == {(1, 2, 48, 16)}
    messages = [{"role": "system", "content": "Be brief."}]
    seen_eviction = False
    for turn in range(6):
        messages.append({"role": "user", "content": f"turn {turn}: tell me more"})
        reply = []
        for ev in engine.generate(messages, max_tokens=20):
            assert ev.kv.cached_tokens <= 48 and ev.kv.capacity_tokens == 48
            assert cache.length <= cache.capacity == 48
            assert ev.kv.kv_bytes == cache.nbytes == 2 * 2 * 2 * 48 * 16 * 4
            reply.append(ev.text)
        seen_eviction |= ev.kv.evicted_tokens > 0
        messages.append({"role": "assistant", "content": "".join(reply)})
    assert {k.shape for k in cache.keys + cache.values} == shapes       # the buffers never grew
    assert seen_eviction
    assert len(cache.history) > 48                                        # the conversation outgrew the budget


@pytest.mark.parametrize("policy", EVICTING)
def test_large_budget_is_identical_to_no_eviction(tiny_package, policy):
    prompt = "one two three four five six seven eight nine ten"
    ref = [e.token for e in Engine(tiny_package, threads=1).generate(prompt, raw=True, max_tokens=24)]
    got = list(Engine(tiny_package, threads=1, kv_budget=256, kv_policy=policy).generate(prompt, raw=True, max_tokens=24))
    assert [e.token for e in got] == ref
    assert got[-1].kv.evicted_tokens == 0


def test_long_prompt_is_prefilled_in_chunks_within_budget(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_budget=64, kv_policy="h2o")
    events = list(engine.generate("word " * 300, raw=True, max_tokens=5))
    assert events[-1].prompt_tokens > 64 * 4
    assert engine.cache.length <= 64 and events[-1].kv.evicted_tokens >= events[-1].prompt_tokens - 64
    # the kept tokens keep their true positions; the next one continues after the whole prompt
    assert engine.cache.next_position == events[-1].prompt_tokens + 4
    assert engine.cache.positions[:, :, :engine.cache.length].max() == engine.cache.next_position - 1


def test_policy_none_refuses_a_prompt_over_budget(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_budget=32, kv_policy="none")
    with pytest.raises(PromptTooLongError, match="policy none"):
        list(engine.generate("word " * 60, raw=True))
    with pytest.raises(BudgetExceededError, match="eviction policy is 'none'"):
        engine.cache.reset()
        engine.prefill(engine.cache, list(range(100, 140)))


def test_protected_turn_larger_than_budget_is_a_clear_error(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_budget=32, kv_policy="streaming")
    with pytest.raises(BudgetExceededError, match="protected"):
        list(engine.generate([{"role": "user", "content": "word " * 80}], max_tokens=4))


def test_system_prompt_and_current_turn_survive_eviction(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_budget=64, kv_policy="tova", evict_chunk=8, keep_recent=4)
    messages = [{"role": "system", "content": "You are a pirate."}]
    for turn in range(5):
        messages.append({"role": "user", "content": f"question number {turn}"})
        reply = "".join(e.text for e in engine.generate(messages, max_tokens=12))
        messages.append({"role": "assistant", "content": reply})
    n_sys = len(engine.tokenizer.encode(engine.render_chat(messages[:1], add_generation_prompt=False),
                                        add_special_tokens=False).ids)
    kept = engine.cache.positions[:, :, :engine.cache.length]
    for p in range(n_sys):          # every system-prompt token is still in every (layer, head)
        assert (kept == p).any(axis=-1).all(), f"system token at position {p} was evicted"
    assert engine.cache.evicted > 0


def test_reposition_rotates_keys_to_their_new_positions(tiny_package):
    """A cache filled at positions 100.. and re-positioned to 0.. gives the logits of one filled at 0..."""
    engine = Engine(tiny_package, threads=1, kv_budget=64)
    ids = list(range(200, 220))
    a = engine.new_cache()
    engine.prefill(a, ids)
    ref = engine.decode_step(a, 7).copy()
    b = engine.new_cache()
    b.next_position = 100
    engine.prefill(b, ids)
    b.reposition()
    assert b.next_position == len(ids)
    got = engine.decode_step(b, 7)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


def test_conversation_outlives_the_rotary_table(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_budget=64, kv_policy="streaming")
    limit = engine.manifest.dims.max_positions             # 512 for the tiny model
    events = list(engine.generate("go " * 40, raw=True, max_tokens=limit + 100, ignore_eos=True))
    assert events[-1].generated_tokens == limit + 100
    assert engine.cache.next_position <= limit


def test_a_changed_last_turn_rewinds_instead_of_refilling(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_budget=64, kv_policy="h2o", evict_chunk=8, keep_recent=16)
    cache = engine.cache
    tokens = [e.token for e in engine.generate("alpha " * 100, raw=True, max_tokens=4)]     # long enough to evict
    assert cache.evicted > 0
    history = list(cache.history)
    # the history is every token fed, evicted ones included: the prompt, then each answer token but the last
    assert history == engine.encode("alpha " * 100, raw=True) + tokens[:-1]
    # the same conversation, its last 3 tokens changed: rewind 3 recent (kept) tokens, feed the new ones
    new_ids = history[:-3] + [11, 12, 13, 14]
    Engine._reuse_or_reset(cache, new_ids)
    assert cache.history == history[:-3] and cache.evicted > 0          # not reset
    # rewinding past evicted tokens is refused, so the caller resets
    assert not cache.rewind(10)


def test_new_slots_start_with_clean_statistics(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_budget=32, kv_policy="h2o", evict_chunk=8, keep_recent=4)
    list(engine.generate("beta " * 60, raw=True, max_tokens=2))
    c = engine.cache
    c.cumulative[:, :, c.length:] = 99.0            # stale values past the end
    c.append(2)
    assert (c.cumulative[:, :, c.length - 2:c.length] == 0).all()


@pytest.fixture(scope="module")
def sliding_package(tmp_path_factory, smollm2_tokenizer):
    """A tiny Mistral whose every layer attends to a 16-token window."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from slm.export import build_package

    torch.manual_seed(3)
    model = MistralForCausalLM(MistralConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                             sliding_window=16, initializer_range=0.2)).eval()
    out = tmp_path_factory.mktemp("pkg") / "tiny-mistral"
    build_package(None, out, quant="fp32", model=model, tokenizer=smollm2_tokenizer)
    return out


@pytest.mark.parametrize("policy", EVICTING)
def test_sliding_window_layers_keep_their_window(sliding_package, policy):
    """Sliding-window layers evict oldest-first whatever the policy (no sinks): a model whose every
    layer looks 16 tokens back then answers under a 24-token budget exactly as with its full cache."""
    prompt = " ".join(f"w{i}" for i in range(40))
    full = Engine(sliding_package, threads=1)
    ref = [e.token for e in full.generate(prompt, raw=True, max_tokens=12, ignore_eos=True)]
    engine = Engine(sliding_package, threads=1, kv_budget=24, kv_policy=policy)
    events = list(engine.generate(prompt, raw=True, max_tokens=12, ignore_eos=True))
    assert events[-1].kv.evicted_tokens > 0 and events[-1].prompt_tokens > 40
    assert [e.token for e in events] == ref
    pos = engine.cache.positions[:, :, :engine.cache.length]
    assert (pos == pos[:, :, -1:] - np.arange(engine.cache.length)[::-1]).all()     # the newest, contiguous


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_graph_attention_mass_matches_pytorch(arch, tmp_path, smollm2_tokenizer):
    """The statistics graph's per-(layer, KV head) attention mass equals the eager PyTorch attention
    probabilities summed over the prompt's queries and each KV head's query group (Gemma: sliding
    layers with an 8-token window over a 20-token prompt, and a global layer)."""
    import torch

    from slm.export import build_package
    from tests.conftest import tiny_gemma3, tiny_llama

    model = {"llama": tiny_llama, "gemma3": tiny_gemma3}[arch]()
    build_package(None, tmp_path / arch, quant="fp32", model=model, tokenizer=smollm2_tokenizer)
    engine = Engine(tmp_path / arch, threads=1, kv_budget=64, kv_policy="h2o")
    ids = list(range(100, 120))
    cache = engine.new_cache()
    engine.prefill(cache, ids)
    mass = cache.cumulative[:, :, :cache.length]                       # (layers, kv heads, 20)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        attentions = model(torch.tensor([ids]), output_attentions=True).attentions
    kv_heads = mass.shape[1]
    ref = np.stack([a[0].sum(1).reshape(kv_heads, -1, len(ids)).sum(1).numpy() for a in attentions])
    np.testing.assert_allclose(mass, ref, atol=1e-4)
    assert np.allclose(mass.sum(-1), len(ids) * model.config.num_attention_heads // kv_heads, rtol=1e-5)
