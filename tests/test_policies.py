"""Each policy keeps what its paper says, on handcrafted statistics (1 layer view of a real cache)."""
from __future__ import annotations

import numpy as np
import pytest

from slm.runtime.eviction import H2O, TOVA, KeyNorm, SnapKV, StreamingLLM, make_policy
from slm.runtime.kv_cache import EvictionConfig, KVCache
from slm.core.errors import SlmError
from slm.core.package import read_manifest


@pytest.fixture()
def cache(tiny_package):
    c = KVCache(read_manifest(tiny_package), capacity=10)
    c.append(10)                          # positions 0..9 in every (layer, head)
    return c


def kept(cache):
    return sorted(set(cache.positions[0, 0, :cache.length].tolist()))


def evict(cache, policy, n=1, keep_recent=0, n_sink=0):
    cache.make_room(n, EvictionConfig(policy=policy, evict_chunk=n, keep_recent=keep_recent, n_sink=n_sink))


def test_the_cache_keeps_attention_sinks_whatever_the_policy(cache):
    cache.last[:, :, :10] = [0.0, 0.0, 0.0, 0.0, 1, 1, 1, 1, 1, 1]     # TOVA alone would drop 0..3
    evict(cache, TOVA(), n=2, n_sink=4)
    assert kept(cache)[:4] == [0, 1, 2, 3]


def test_streaming_llm_keeps_sinks_and_evicts_the_oldest_after_them(cache):
    evict(cache, StreamingLLM(n_sink=2), n=3)
    assert kept(cache) == [0, 1, 5, 6, 7, 8, 9]


def test_h2o_keeps_heavy_hitters(cache):
    cache.cumulative[:, :, :10] = [5, 0.1, 3, 0.2, 4, 0.3, 0.05, 2, 2, 2]
    evict(cache, H2O(), n=3, keep_recent=2)
    assert kept(cache) == [0, 2, 4, 5, 7, 8, 9]       # 1, 3, 6 had the least accumulated attention


def test_tova_evicts_what_the_last_query_ignores(cache):
    cache.cumulative[:, :, :10] = 100.0                 # history must not matter to TOVA
    cache.last[:, :, :10] = [0.3, 0.2, 0.01, 0.1, 0.1, 0.1, 0.1, 0.05, 0.02, 0.02]
    evict(cache, TOVA(), n=1)
    assert 2 not in kept(cache) and len(kept(cache)) == 9


def test_snapkv_pooling_keeps_the_neighbourhood_of_a_hit(cache):
    cache.recent[:, :, :10] = [0.1, 0.1, 0.1, 0.0, 1.0, 0.0, 0.1, 0.1, 0.1, 0.1]
    evict(cache, SnapKV(kernel=3), n=2)
    # 3 and 5 attend nothing themselves but sit next to the hit at 4: pooling keeps them
    assert {3, 4, 5} <= set(kept(cache))
    raw = KVCache(cache.manifest, capacity=10)
    raw.append(10)
    raw.recent[:, :, :10] = [0.1, 0.1, 0.1, 0.0, 1.0, 0.0, 0.1, 0.1, 0.1, 0.1]
    evict(raw, SnapKV(kernel=1), n=2)
    assert 3 not in kept(raw) and 5 not in kept(raw)      # without pooling they go


def test_key_norm_evicts_the_largest_keys(cache):
    for k in cache.keys:
        k[0, :, :10, :] = 1.0
        k[0, :, 6, :] = 9.0
    evict(cache, KeyNorm(), n=1)
    assert 6 not in kept(cache)


def test_decisions_are_per_head(cache):
    cache.last[0, 0, :10] = np.linspace(0, 1, 10)          # head 0 ignores position 0
    cache.last[0, 1, :10] = np.linspace(1, 0, 10)          # head 1 ignores position 9
    evict(cache, TOVA(), n=1)
    assert 0 not in cache.positions[0, 0, :9] and 9 in cache.positions[0, 0, :9]
    assert 9 not in cache.positions[0, 1, :9] and 0 in cache.positions[0, 1, :9]


def test_compaction_moves_keys_with_their_positions(cache):
    for layer, k in enumerate(cache.keys):
        k[0, :, :10, 0] = np.arange(10)                     # key[0] encodes the position
    evict(cache, StreamingLLM(n_sink=1), n=4)
    for k in cache.keys:
        assert (k[0, :, :cache.length, 0] == cache.positions[0, :, :cache.length]).all()


def test_unknown_policy_is_named():
    with pytest.raises(SlmError, match="'lru' is unknown; accepted: none, streaming, h2o"):
        make_policy("lru")


def test_each_policy_declares_what_it_reads_and_the_cache_keeps_only_that(tiny_package):
    from slm.runtime import Engine
    assert [s.name for s in H2O.statistics] == ["cumulative"] and not KeyNorm().needs_attention
    for policy, kept in (("h2o", {"cumulative"}), ("tova", {"last"}), ("snapkv", {"recent"}), ("streaming", set()),
                         ("none", set())):
        engine = Engine(tiny_package, threads=1, kv_budget=32, kv_policy=policy)
        assert set(engine.cache.stats) == kept, policy
        assert engine.new_cache(statistics=TOVA.statistics).stats.keys() == {"last"}
    cache = Engine(tiny_package, threads=1, kv_budget=32, kv_policy="h2o").new_cache()
    cache.append(32)
    with pytest.raises(ValueError, match="tova reads statistics this cache does not keep"):
        cache.make_room(1, EvictionConfig(policy=TOVA(), evict_chunk=1, keep_recent=0))
    with pytest.raises(AttributeError, match="statistics kept: cumulative"):
        cache.last


def test_a_snapshot_restores_the_whole_cache_in_place(tiny_package):
    """What slm/evolve/heldout.py does between scoring an answer and generating one: the same logits after."""
    from slm.runtime import Engine
    engine = Engine(tiny_package, threads=1, kv_budget=24, kv_policy="h2o", evict_chunk=4, keep_recent=2)
    cache = engine.new_cache()
    eviction = engine.eviction_for(cache)
    logits = engine.prefill(cache, list(range(100, 140)), eviction)
    snap, keys = cache.snapshot(), cache.keys[0]
    first = engine.decode_step(cache, int(np.argmax(logits)), eviction).copy()
    for token in range(200, 230):                  # evicts, re-orders slots, changes every statistic
        engine.decode_step(cache, token, eviction)
    cache.restore(snap)
    assert cache.keys[0] is keys and cache.length == snap.length and cache.history == list(snap.history)
    assert np.array_equal(cache.cumulative[:, :, :cache.length], snap.stats["cumulative"][:, :, :cache.length])
    assert np.array_equal(engine.decode_step(cache, int(np.argmax(logits)), eviction), first)
