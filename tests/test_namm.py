"""NAMM: the scorer's numpy forward against a plain-loop reference, the cache's EMA bank, packaging,
the error without a scorer, and the budget under NAMM eviction."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from slm.evolve.cli import install
from slm.runtime import Engine
from slm.runtime.eviction import make_policy
from slm.runtime.eviction.base import CacheView
from slm.evolve.priors import initial_vector
from slm.runtime.eviction.namm import FEATURES, NAMM, BackwardAttentionMemory, namm_features
from slm.runtime.eviction.namm_file import load_scorer
from slm.runtime.kv_cache import KVCache
from slm.core.errors import PackageError
from slm.core.package import read_manifest


def reference_scores(net: BackwardAttentionMemory, f: np.ndarray) -> np.ndarray:
    """The scorer written as loops over (head, token, newer token), in float64."""
    p = {k: getattr(net, k).astype(np.float64) for k in net.SHAPES}
    B, n, _ = f.shape
    out = np.zeros((B, n))
    for b in range(B):
        x = [np.tanh(f[b, i] @ p["We"] + p["be"]) for i in range(n)]
        for i in range(n):
            q = x[i] @ p["Wq"]
            logits = [q @ (x[j] @ p["Wk"]) / np.sqrt(p["Wq"].shape[1]) for j in range(i, n)]   # newer only
            w = np.exp(np.array(logits) - max(logits))
            w /= w.sum()
            att = sum(w[j - i] * (x[j] @ p["Wv"]) for j in range(i, n))
            y = x[i] + att @ p["Wo"]
            h = np.maximum(y @ p["W1"] + p["b1"], 0)
            out[b, i] = h @ p["w2"] + f[b, i] @ p["w_skip"]
    return out


def test_scorer_forward_matches_loop_reference():
    rng = np.random.default_rng(0)
    net = BackwardAttentionMemory.from_vector(rng.normal(0, 0.5, BackwardAttentionMemory.size()))
    f = rng.normal(0, 1, (3, 9, len(FEATURES))).astype(np.float32)
    np.testing.assert_allclose(net.forward(f), reference_scores(net, f), rtol=1e-4, atol=1e-4)
    # the row tile that bounds memory does not change the result
    np.testing.assert_allclose(net.forward(f, tile=4), net.forward(f), rtol=1e-5, atol=1e-5)
    # large weights take the max-subtracted path, still exact
    big = BackwardAttentionMemory.from_vector(rng.normal(0, 3.0, BackwardAttentionMemory.size()))
    np.testing.assert_allclose(big.forward(f, tile=4), reference_scores(big, f), rtol=1e-3, atol=1e-3)


def test_oldest_token_sees_everything_newest_only_itself():
    rng = np.random.default_rng(1)
    net = BackwardAttentionMemory.from_vector(rng.normal(0, 0.5, BackwardAttentionMemory.size()))
    f = rng.normal(0, 1, (1, 6, len(FEATURES))).astype(np.float32)
    g = f.copy()
    g[0, 0] += 1.0                          # change the oldest token: no newer token's score moves
    assert np.allclose(net.forward(f)[0, 1:], net.forward(g)[0, 1:])
    g = f.copy()
    g[0, -1] += 1.0                         # change the newest: every token looks at it
    assert not np.allclose(net.forward(f)[0, :-1], net.forward(g)[0, :-1])


def test_linear_scorer_skips_the_network_and_matches_the_reference():
    rng = np.random.default_rng(2)
    theta = rng.normal(0, 0.5, BackwardAttentionMemory.size())
    net = BackwardAttentionMemory.from_vector(theta)
    net = BackwardAttentionMemory(**{**{k: getattr(net, k) for k in net.SHAPES}, "w2": np.zeros_like(net.w2)})
    f = rng.normal(0, 1, (2, 7, len(FEATURES))).astype(np.float32)
    np.testing.assert_allclose(net.forward(f), reference_scores(net, f), rtol=1e-5, atol=1e-5)
    # the network is not run at all: NaN weights in it (0 * NaN = NaN) leave the scores finite
    broken = BackwardAttentionMemory(**{**{k: getattr(net, k) for k in net.SHAPES}, "Wq": np.full_like(net.Wq, np.nan)})
    assert np.isfinite(broken.forward(f)).all()


def _view(rng, L=2, H=3, n=40, next_position=300) -> CacheView:
    positions = np.sort(rng.choice(next_position - 1, (L, H, n), replace=True), axis=-1).astype(np.int64)
    age = next_position - positions
    cumulative = (rng.gamma(0.5, 1.0, (L, H, n)) * age / n).astype(np.float32)   # mass ~ age x a per-token rate
    return CacheView(positions=positions, keys=[], next_position=next_position,
                     stats={"cumulative": cumulative, "recent": cumulative / age, "last": cumulative / age,
                            "spectrum": np.repeat((cumulative / age)[None], 3, axis=0).astype(np.float32)})


def test_h2o_prior_evicts_what_h2o_evicts():
    """`--prior h2o` starts the evolution at H2O's ranking (accumulated attention)."""
    from slm.evolve.cma_es import EvolveConfig, search_space
    from slm.runtime.eviction.h2o import H2O
    base, _ = search_space(EvolveConfig(package="", search="skip", prior="h2o"))
    scores = NAMM(BackwardAttentionMemory.from_vector(base)).score(view := _view(np.random.default_rng(3)))
    k = 10                                                  # the 10 each (layer, head) would evict
    evict = lambda s: np.argsort(s, axis=-1)[..., :k].reshape(-1, k)
    same = [len(set(a) & set(b)) for a, b in zip(evict(scores), evict(H2O().score(view)))]
    # the same choices up to log1p(age) for log(age) and the 1e-4 floor under the mass (near-ties only)
    assert sum(same) >= 0.9 * k * len(same), same
    random = NAMM(BackwardAttentionMemory.from_vector(initial_vector(0, None))).score(view)
    assert sum(len(set(a) & set(b)) for a, b in zip(evict(random), evict(H2O().score(view)))) < 0.6 * sum(same)
    with pytest.raises(ValueError, match="prior 'h20' is unknown; accepted: .*h2o"):
        initial_vector(0, "h20")


def test_vector_round_trip_and_size():
    theta = initial_vector(0)
    assert BackwardAttentionMemory.size() == theta.size and 500 < theta.size < 5000
    assert np.array_equal(BackwardAttentionMemory.from_vector(theta).to_vector(), theta)


def test_spectrum_is_an_ema_bank_of_the_attention_mass(tiny_package):
    from slm.runtime.eviction.namm import SPECTRUM_HALF_LIVES
    c = KVCache(read_manifest(tiny_package), capacity=8, attention_stats=True)
    c.append(4)
    c.mass[:, 0, :, :4] = 1.0
    c.observe(1)
    c.mass[:, 0, :, :4] = 0.0
    c.observe(2)                            # two queries' worth of decay, no new mass
    for s, hl in enumerate(SPECTRUM_HALF_LIVES):
        assert np.allclose(c.spectrum[s, :, :, :4], 0.5 ** (2 / hl))
    view = c.view()
    f = namm_features(view)
    assert f.shape == (c.positions.shape[0], c.positions.shape[1], 4, len(FEATURES)) and np.isfinite(f).all()


def test_namm_without_a_scorer_is_a_clear_error(tiny_package):
    with pytest.raises(PackageError, match="slm evolve --model"):
        Engine(tiny_package, threads=1, kv_budget=32, kv_policy="namm")


@pytest.fixture()
def namm_package(tiny_package, tmp_path):
    pkg = tmp_path / "tiny-namm"
    shutil.copytree(tiny_package, pkg)
    theta = np.random.default_rng(3).normal(0, 0.5, BackwardAttentionMemory.size())
    install(pkg, theta, {"note": "random test scorer"})
    return pkg, theta


def test_installed_scorer_is_read_back(namm_package, tiny_package):
    pkg, theta = namm_package
    m = read_manifest(pkg)
    assert m.namm_file == "namm.npz" and read_manifest(tiny_package).namm_file == ""
    net, header = load_scorer(pkg / m.namm_file)
    assert np.allclose(net.to_vector(), theta.astype(np.float32)) and header["record"]["note"] == "random test scorer"
    assert isinstance(make_policy("namm", pkg), NAMM)
    # a manifest written before namm_file existed still reads
    d = json.loads((pkg / "manifest.json").read_text())
    del d["namm_file"]
    (pkg / "manifest.json").write_text(json.dumps(d))
    assert read_manifest(pkg).namm_file == ""


def test_namm_never_exceeds_the_budget(namm_package):
    pkg, _ = namm_package
    engine = Engine(pkg, threads=1, kv_budget=48, kv_policy="namm", evict_chunk=6, keep_recent=4)
    messages = [{"role": "system", "content": "Be brief."}]
    for turn in range(6):
        messages.append({"role": "user", "content": f"turn {turn}: " + "tell me more about rivers " * 3})
        reply = ""
        for event in engine.generate(messages, max_tokens=12, ignore_eos=True):
            c = engine.cache
            assert c.length <= c.capacity == 48 and event.kv.cached_tokens <= 48
            assert all(k.shape[2] == 48 for k in c.keys) and c.spectrum.shape[-1] == 48
            reply += event.text
        messages.append({"role": "assistant", "content": reply})
    assert engine.cache.evicted > 0
    pos = engine.cache.positions[:, :, :engine.cache.length]
    assert (np.diff(pos, axis=-1) > 0).all()             # slots stay in position order after compaction


def test_opening_is_what_each_step_read_in_the_conversations_opening(tiny_package):
    from slm.runtime.eviction.namm import OPENING
    c = KVCache(read_manifest(tiny_package), capacity=OPENING[1] + 8, attention_stats=True)
    c.append(OPENING[1] + 2)                # the opening and two tokens after it: one step of 2 queries
    n = c.length
    rng = np.random.default_rng(0)
    c.mass[:, 0, :, :n] = rng.uniform(0, 1, c.mass[:, 0, :, :n].shape)
    c.observe(2)
    read = c.mass[:, 0, :, OPENING[0]:OPENING[1]].sum(-1) / 2            # (L, H): per query
    assert np.allclose(c.opening[:, :, n - 2:n], read[..., None])        # the step's two tokens
    assert not c.opening[:, :, :n - 2].any()                              # earlier slots untouched
    c.append(1)
    c.mass[:, 0, :, :n + 1] = 0.0
    c.mass[:, 0, :, OPENING[0]] = 0.25
    c.observe(1)
    assert np.allclose(c.opening[:, :, n], 0.25) and np.allclose(c.opening[:, :, n - 2:n], read[..., None])
    keep = np.broadcast_to(np.arange(1, n + 1), c.positions.shape[:2] + (n,))   # evict slot 0
    c._compact(keep)
    assert np.allclose(c.opening[:, :, n - 1], 0.25)                      # moved with its token
    f = namm_features(c.view())
    assert np.allclose(f[..., n - 1, FEATURES.index("log_opening")], np.log(1e-4 + 0.25) / 4)


def test_a_scorer_from_before_log_opening_loads_and_ranks_as_it_did(tmp_path):
    old_features = FEATURES[:-1]
    net = BackwardAttentionMemory.from_vector(initial_vector(5, "h2o"))
    header = {"format": "namm-bam/1", "features": list(old_features), "spectrum_half_lives": [4.0, 64.0, 256.0],
              "record": {}}
    arrays = {k: getattr(net, k) for k in net.SHAPES}
    arrays["We"], arrays["w_skip"] = arrays["We"][:-1], arrays["w_skip"][:-1]
    with open(tmp_path / "old.npz", "wb") as fh:
        np.savez(fh, header=np.array(json.dumps(header)), **arrays)
    loaded, h = load_scorer(tmp_path / "old.npz")
    assert h["format"] == "namm-bam/2" and loaded.w_skip[-1] == 0 and not loaded.We[-1].any()
    f = np.random.default_rng(1).normal(0, 1, (2, 6, len(FEATURES))).astype(np.float32)
    g = f.copy()
    g[..., -1] = 9.0                        # whatever the new feature says, an old scorer ignores it
    old_scores = np.tanh(f[..., :-1] @ arrays["We"] + net.be)             # the embedding it had
    assert np.allclose(np.tanh(f @ loaded.We + loaded.be), old_scores)
    assert np.allclose(loaded.forward(f), loaded.forward(g))


def test_opening_prior_ranks_by_mean_attention_and_the_opening():
    from dataclasses import replace

    from slm.evolve.cma_es import EvolveConfig, search_space
    net = BackwardAttentionMemory.from_vector(initial_vector(0, "opening"))
    w = dict(zip(FEATURES, net.w_skip))
    assert w["log_mass_per_query"] == 1 and w["log_opening"] == 2
    assert sum(v != 0 for v in w.values()) == 2
    # equal attention per query everywhere: what decides is what each token read in the opening
    base, _ = search_space(EvolveConfig(package="", search="skip", prior="opening"))
    view = _view(np.random.default_rng(4))
    age = view.next_position - view.positions
    opening = np.random.default_rng(5).uniform(0, 0.3, view.positions.shape).astype(np.float32)
    view = replace(view, stats={**view.stats, "cumulative": (age / view.positions.shape[-1]).astype(np.float32),
                                "opening": opening})
    scores = NAMM(BackwardAttentionMemory.from_vector(base)).score(view)
    assert (np.argsort(scores, -1)[..., :10] == np.argsort(opening, -1)[..., :10]).all()


def test_the_default_models_shipped_scorer_installs_and_evicts_within_budget(default_gguf_package, tmp_path):
    from slm.runtime.eviction.namm_file import SHIPPED, install_scorer_file
    pkg = tmp_path / "default"
    shutil.copytree(default_gguf_package, pkg)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a scorer")
    with pytest.raises(PackageError, match="unreadable"):
        install_scorer_file(pkg, bad)
    assert read_manifest(pkg).namm_file == "" and not (pkg / "namm.npz").exists()     # untouched
    install_scorer_file(pkg)
    assert read_manifest(pkg).namm_file == "namm.npz"
    assert (pkg / "namm.npz").read_bytes() == SHIPPED.read_bytes()
    engine = Engine(pkg, threads=1, kv_budget=64, kv_policy="namm")
    sizes = []
    for event in engine.generate("Tell me a long story about a dragon and a lantern.", max_tokens=80):
        sizes.append(engine.cache.length)
    assert engine.cache.evicted > 0 and max(sizes) <= 64
