"""What one NAMM eviction decision costs: `score` on a full cache of n slots (features + scorer; the
full network and the linear scorer `--search skip` evolves), against SnapKV's, a decode step of the
model, and `observe` (folding a step's attention mass into every statistic, `opening` included,
which every attention-reading policy pays per step), single thread.

    python -m slm.evolve.overhead --model PACKAGE
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def _best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slm.evolve.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, metavar="PACKAGE")
    p.add_argument("--slots", nargs="*", type=int, default=[128, 256, 512, 1024])
    args = p.parse_args(argv)
    from slm.runtime import Engine
    from slm.runtime.eviction import NAMM, SnapKV
    from slm.evolve.priors import initial_vector
    from slm.runtime.eviction.namm import BackwardAttentionMemory
    engine = Engine(args.model, threads=1, kv_policy="tova")
    d = engine.manifest.dims
    namm, snapkv = NAMM(BackwardAttentionMemory.from_vector(initial_vector(0))), SnapKV()
    linear = BackwardAttentionMemory.from_vector(initial_vector(0, "opening"))
    linear = NAMM(replace(linear, w2=np.zeros_like(linear.w2)))
    rng = np.random.default_rng(0)
    print("| cache slots | NAMM score ms | linear NAMM score ms | SnapKV score ms | observe ms | decode step ms | "
          "evictions per 1000 tokens (chunk = 1/8) | NAMM ms per decoded token | linear NAMM ms per decoded token |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.slots:
        cache = engine.new_cache(n + 16, statistics=NAMM.statistics)     # what NAMM (and SnapKV) read
        ids = rng.integers(100, 1000, n).tolist()
        engine.prefill(cache, ids, engine.eviction_for(cache))
        view = cache.view()
        t_namm = _best_of(lambda: namm.score(view))
        t_linear = _best_of(lambda: linear.score(view))
        t_snap = _best_of(lambda: snapkv.score(view))
        t_observe = _best_of(lambda: cache.observe(1), 20)
        t_step = _best_of(lambda: engine.decode_step(cache, 42, engine.eviction_for(cache)), 8)   # no eviction: room for 16
        per_1000 = 1000 / max(1, n // 8)
        print(f"| {n} | {t_namm * 1e3:.1f} | {t_linear * 1e3:.2f} | {t_snap * 1e3:.2f} | {t_observe * 1e3:.3f} | "
              f"{t_step * 1e3:.1f} | {per_1000:.1f} | {t_namm * per_1000:.2f} | {t_linear * per_1000:.3f} |")
    print(f"\n{d.num_layers} layers x {d.num_kv_heads} KV heads; {BackwardAttentionMemory.size()} scorer parameters",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
