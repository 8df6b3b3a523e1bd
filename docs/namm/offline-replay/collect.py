"""Explore: features of every cached token at each eviction point of a full-cache prefill, and the
attention the answer's queries later give each token (the label). One probe per call, saved as npz."""
import sys, numpy as np, pickle, time
from pathlib import Path
from runtime import Engine
from runtime.eviction.namm import namm_features
from evolve.probes import make_probes

PKG = sys.argv[1]; OUT = Path(sys.argv[2]); seed = int(sys.argv[3]); lengths = [int(x) for x in sys.argv[4].split(",")]
tasks = sys.argv[5].split(","); haystacks = sys.argv[6].split(","); samples = int(sys.argv[7])
OUT.mkdir(parents=True, exist_ok=True)
eng = Engine(PKG, threads=1, kv_policy="tova", protect_chat=False)
probes = [p for L in lengths for p in make_probes(eng, tasks, haystacks, L, samples, seed)]
CH = 32
for k, p in enumerate(probes):
    t0 = time.time()
    ids = list(p.prompt_ids); n = len(ids)
    cap = n + len(p.prefix_ids) + len(p.answer_ids) + 4
    cache = eng.new_cache(cap)
    ev = eng.eviction_for(cache)
    from dataclasses import replace
    ev = replace(ev, policy=None)
    out = np.zeros((1, 1, eng.manifest.dims.vocab_size), np.float32)
    feats, times = [], []
    for s in range(0, n, CH):
        if s >= 96:   # eviction points from 12.5% of 768 on
            f = namm_features(cache.view())
            vn = np.stack([np.linalg.norm(v[0, :, :s], axis=-1) for v in cache.values])
            kn = np.stack([np.linalg.norm(kk[0, :, :s], axis=-1) for kk in cache.keys])
            cum = cache.cumulative[:, :, :s]
            feats.append(np.concatenate([f, np.log(vn + 1e-6)[..., None], np.log(kn + 1e-6)[..., None],
                                         (np.log(1e-4 + s * cum) / 4)[..., None]], -1).astype(np.float16))
            times.append(s)
        eng._feed(cache, ids[s:s + CH], ev, out)
    logits = out[0, 0]
    reply = p.prefix_ids + p.answer_ids
    label = np.zeros((cache.mass.shape[0], cache.mass.shape[2], n), np.float64)
    for i, tok in enumerate(reply[:-1]):
        eng.decode_step(cache, tok, ev)
        if i + 1 >= len(p.prefix_ids):      # this step's logits predict an answer token
            label += cache.mass[:, 0, :, :n]
    np.savez(OUT / f"{seed}-{k}.npz", times=np.array(times), label=label.astype(np.float32), n=n,
             task=p.task, haystack=p.haystack, **{f"f{t}": f for t, f in zip(times, feats)})
    print(k, p.task, p.haystack, n, f"{time.time()-t0:.1f}s", flush=True)
