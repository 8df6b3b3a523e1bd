"""Does the evidence survive? The share of the needle sentences' tokens still cached after a budgeted,
streamed prefill, per policy: what the answer needs, counted directly instead of through its likelihood.

    python -m slm.evolve.survival --model PACKAGE --budget 0.25 --policies streaming h2o tova snapkv namm

Evidence = the prompt tokens inside a sentence of the text that holds one of the answers (the needle
"One of the special magic numbers for X is: N.", the "VAR A = ..." chain). Survival is averaged over
every (layer, KV head) and over the heads that read the evidence most under the full cache (the
attention the answer's queries give it: retrieval heads). A budget keeps about `budget` of the prompt,
so a policy blind to the evidence keeps about that share of it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np


def evidence_mask(engine, case) -> np.ndarray:
    """(prompt tokens,) True inside a context sentence that holds an answer."""
    if engine.template is None:         # a base model: the text as is (as Engine.encode takes it)
        text, special = case.prompt, True
    else:
        text, special = engine.render_chat([{"role": "user", "content": case.prompt}]), False
    enc = engine.tokenizer.encode(text, add_special_tokens=special)
    start = text.find(case.context)
    end = start + len(case.context)
    spans = []
    for answer in case.answers:
        for m in re.finditer(re.escape(answer), text[start:end]):
            i, j = start + m.start(), start + m.end()
            s0 = max(text.rfind(". ", start, i), text.rfind("\n", start, i), start)
            e0 = text.find(".", j)
            spans.append((s0, end if e0 < 0 else e0 + 1))
    return np.array([any(s <= o[0] < e for s, e in spans) and o[1] > o[0] for o in enc.offsets])


def kept_positions(cache, n: int) -> np.ndarray:
    """(L, H, n) True where the (layer, KV head) still caches the prompt token at that position."""
    kept = np.zeros(cache.positions.shape[:2] + (n,), bool)
    pos = cache.positions[:, :, :cache.length]
    np.put_along_axis(kept, pos[pos < n].reshape(pos.shape[0], pos.shape[1], -1), True, axis=-1)
    return kept


def reading_heads(engine, probe, mask: np.ndarray, top: int) -> np.ndarray:
    """Flat indices of the `top` (layer, KV head)s whose answer queries read the evidence most (full cache)."""
    from slm.evolve.probes import budgeted
    cache, eviction = budgeted(engine, probe, None, 1.0)
    engine.prefill(cache, list(probe.prompt_ids), eviction)
    n, read = len(probe.prompt_ids), 0.0
    reply = probe.prefix_ids + probe.answer_ids
    for i, token in enumerate(reply[:-1]):
        engine.decode_step(cache, token, eviction)
        if i + 1 >= len(probe.prefix_ids):         # this step predicts an answer token
            read = read + cache.mass[:, 0, :, :n][..., mask].sum(-1)
    return np.argsort(np.ravel(read))[-top:]


def main(argv: list[str] | None = None) -> int:
    from slm.evolve.probes import PROBE_OPTIONS, budgeted, probe_of
    from slm.runtime import Engine
    from slm.runtime.eviction import make_policy
    from slm.evals.longctx.tasks import make_cases
    from slm.core.paths import resolve_package
    p = argparse.ArgumentParser(prog="python -m slm.evolve.survival", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, metavar="PACKAGE")
    p.add_argument("--namm", default=None, metavar="PACKAGE", help="package whose scorer `namm` uses (default --model)")
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument("--policies", nargs="+", default=["streaming", "h2o", "tova", "snapkv", "namm"])
    p.add_argument("--tasks", nargs="+", default=["niah_single", "niah_multikey", "variable_tracking"])
    p.add_argument("--haystacks", nargs="+", default=["shakespeare", "repeated"])
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--top", type=int, default=10, help="reading heads per probe")
    p.add_argument("--out", default=None, help="write results.json here")
    args = p.parse_args(argv)
    package = str(resolve_package(args.model))
    engine = Engine(package, PROBE_OPTIONS)
    count = lambda text: len(engine.tokenizer.encode(text, add_special_tokens=False).ids)
    cases = [c for t in args.tasks for h in args.haystacks for c in make_cases(t, args.length, h, args.samples, count, seed=args.seed)]
    probes = [probe_of(engine, c) for c in cases]
    masks = [evidence_mask(engine, c) for c in cases]
    for pr, m in zip(probes, masks):
        if len(m) != len(pr.prompt_ids) or not m.any():
            raise SystemExit(f"evidence of a {pr.task} probe not found in its prompt ({m.sum()} tokens)")
    heads = [reading_heads(engine, pr, m, args.top) for pr, m in zip(probes, masks)]
    rows = {}
    for name in args.policies:
        policy = make_policy(name, args.namm or package)
        every, reading = [], []
        for pr, m, top in zip(probes, masks, heads):
            cache, eviction = budgeted(engine, pr, policy, args.budget)
            engine.prefill(cache, list(pr.prompt_ids), eviction)
            kept = kept_positions(cache, len(pr.prompt_ids))[..., m]            # (L, H, evidence)
            every.append(float(kept.mean()))
            reading.append(float(kept.reshape(-1, kept.shape[-1])[top].mean()))
        rows[name] = {"every_head": every, "reading_heads": reading}
        se = lambda x: np.std(x, ddof=1) / np.sqrt(len(x))
        print(f"{name:10s} evidence kept: every head {np.mean(every):.3f} +- {se(every):.3f}   "
              f"reading heads {np.mean(reading):.3f} +- {se(reading):.3f}", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "survival.json").write_text(json.dumps(
            {"args": vars(args), "probes": [{"task": c.task, "haystack": c.haystack, "evidence_tokens": int(m.sum())}
                                            for c, m in zip(cases, masks)], "policies": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
