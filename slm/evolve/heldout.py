"""NAMM against the hand-made policies on task types and haystacks it was not evolved on.

    python -m slm.evolve.heldout --model PACKAGE --out results/namm/smollm2-135m

Probe groups (seeded; instances never seen in training, whose seed is 0):
    heldout_tasks     niah_multivalue (repeated, shakespeare), common_words (word list)
    heldout_haystack  the training task types on the repeated-sentence haystack
    train_tasks       the training task types and haystack, new instances
For every (policy, budget) and probe: the retention of the gold answer's likelihood (as in
training) and the RULER task score of a greedy answer, both from one budgeted prefill (the cache is
snapshotted between the two). Full cache first. Results: results.json, table.md, plot.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from slm.runtime.eviction import EVICTING

GROUPS = {"heldout_tasks": (("niah_multivalue", "common_words"), ("repeated", "shakespeare")),
          "heldout_haystack": (("niah_single", "niah_multikey", "variable_tracking"), ("repeated",)),
          "train_tasks": (("niah_single", "niah_multikey", "variable_tracking"), ("shakespeare",))}
POLICIES = EVICTING
def run_cell(package: str, policy: str, budget: float, probes) -> dict:
    from slm.evolve.probes import PROBE_OPTIONS, answer_logprob, budgeted
    from slm.runtime import Engine
    from slm.runtime.decoding import greedy
    engine = Engine(package, PROBE_OPTIONS, kv_policy="none" if budget >= 1 else policy)
    rows, t0, evict_s = [], time.time(), 0.0
    for p in probes:
        cache, eviction = budgeted(engine, p, engine.policy, budget)
        logits = engine.prefill(cache, list(p.prompt_ids), eviction)
        snap = cache.snapshot()
        logp = answer_logprob(engine, cache, eviction, logits, p)
        cache.restore(snap)
        text = engine.tokenizer.decode(greedy(engine, cache, logits, p.max_tokens, eviction, stop_ids=engine.eos_ids))
        score = sum(a.lower() in text.lower() for a in p.answers) / len(p.answers)
        rows.append({"task": p.task, "haystack": p.haystack, "prompt_tokens": len(p.prompt_ids),
                     "capacity": cache.capacity, "logp": logp, "score": score, "output": text[:160]})
    return {"policy": "full" if budget >= 1 else policy, "budget": budget, "rows": rows, "seconds": time.time() - t0}


def _cell(args):
    return run_cell(*args)


def summarise(cells: list[dict], groups: list[str]) -> str:
    full = next(c for c in cells if c["policy"] == "full")
    for c in cells:
        for r, ref in zip(c["rows"], full["rows"]):
            r["retention"] = float(np.exp(r["logp"] - ref["logp"]))
    budgets = sorted({c["budget"] for c in cells if c["budget"] < 1}, reverse=True)
    head = "| policy | " + " | ".join(f"{g} @{b:.1%}" for b in budgets for g in groups) + " |"
    lines = ["Retention of the gold answer's likelihood, exp(logp - logp_full) (1 = full cache), mean over probes:", "",
             head, "|---|" + "---:|" * (len(budgets) * len(groups))]
    mean = lambda rows, key: statistics.mean(r[key] for r in rows) if rows else float("nan")
    order = ["full"] + [p for p in POLICIES if any(c["policy"] == p for c in cells)]
    for key, title in (("retention", None), ("score", "Task score (RULER recall of a greedy answer), mean over probes:")):
        if title:
            lines += ["", title, "", head, "|---|" + "---:|" * (len(budgets) * len(groups))]
        for pol in order:
            vals = []
            for b in budgets:
                c = full if pol == "full" else next((c for c in cells if c["policy"] == pol and c["budget"] == b), None)
                for g in groups:
                    vals.append(mean([r for r in c["rows"] if r["group"] == g], key) if c else float("nan"))
            lines.append(f"| {pol} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines + overall(cells, budgets))


def overall(cells: list[dict], budgets: list[float]) -> list[str]:
    """Every probe together: mean and geometric-mean retention (floored at 1%, as the log fitness),
    and NAMM against each hand-made policy probe by probe (mean log-retention difference +- its
    standard error; wins/losses count differences over 1%)."""
    log = lambda c: np.log(np.maximum([r["retention"] for r in c["rows"]], 0.01))
    at = {(c["policy"], c["budget"]): c for c in cells}
    lines = ["", "All probes together: mean retention / geometric mean (floored at 0.01):", "",
             "| policy | " + " | ".join(f"@{b:.1%}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for pol in POLICIES:
        if any((pol, b) in at for b in budgets):
            lines.append(f"| {pol} | " + " | ".join(
                f"{np.mean([r['retention'] for r in at[pol, b]['rows']]):.3f} / {np.exp(log(at[pol, b]).mean()):.3f}"
                if (pol, b) in at else "—" for b in budgets) + " |")
    if not any(("namm", b) in at for b in budgets):
        return lines
    lines += ["", "NAMM against each policy, probe by probe: mean of log(NAMM / policy retention) +- SE, "
              "and probes NAMM keeps more / less of (by over 1%):", "",
              "| against | " + " | ".join(f"@{b:.1%}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for pol in POLICIES:
        if pol == "namm" or not any((pol, b) in at for b in budgets):
            continue
        vals = []
        for b in budgets:
            if ("namm", b) not in at or (pol, b) not in at:
                vals.append("—")
                continue
            d = log(at["namm", b]) - log(at[pol, b])
            vals.append(f"{d.mean():+.3f} +- {d.std(ddof=1) / np.sqrt(len(d)):.3f} ({int((d > 0.01).sum())}/{int((d < -0.01).sum())})")
        lines.append(f"| {pol} | " + " | ".join(vals) + " |")
    return lines


def plot(cells: list[dict], path: Path, title: str) -> None:
    from slm.evals.plot import plot_by_budget
    curves = {}
    for pol in POLICIES:
        pts = sorted((c["budget"], statistics.mean(r["retention"] for r in c["rows"] if r["group"] != "train_tasks"
                                                   or all(q["group"] == "train_tasks" for q in c["rows"])))
                     for c in cells if c["policy"] == pol)
        if pts:
            curves[pol] = pts
    plot_by_budget(curves, path, title=title, ylabel="answer-likelihood retention (held-out)", full_cache=1.0,
                   highlight="namm")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slm.evolve.heldout", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, metavar="PACKAGE")
    p.add_argument("--policies", nargs="*", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--budgets", nargs="*", type=float, default=[0.25, 0.125])
    p.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS))
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--question-last", action="store_true",
                   help="ask each question only after the text (by default it also opens the prompt)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from slm.evolve.probes import make_probes
    from slm.runtime import Engine
    engine = Engine(args.model, threads=1)
    probes, group_of = [], []
    for g in args.groups:
        tasks, haystacks = GROUPS[g]
        new = make_probes(engine, list(tasks), list(haystacks), args.length, args.samples, args.seed,
                          question_first=not args.question_last)
        fits = [q for q in new if len(q.prompt_ids) + len(q.prefix_ids) + len(q.answer_ids) + q.max_tokens
                < engine.manifest.dims.max_positions]
        if len(fits) < len(new):
            print(f"[heldout] {g}: {len(new) - len(fits)} probes skipped (longer than the model's context)", file=sys.stderr)
        new = fits
        probes += new
        group_of += [g] * len(new)
    jobs = [(args.model, "none", 1.0, probes)] + [(args.model, pol, b, probes) for b in args.budgets for pol in args.policies]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cells = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for cell in pool.map(_cell, jobs):
            for r, g in zip(cell["rows"], group_of):
                r["group"] = g
            cells.append(cell)
            print(f"[heldout] {cell['policy']:9s} @ {cell['budget']:6.1%}: score "
                  f"{statistics.mean(r['score'] for r in cell['rows']):.3f} ({cell['seconds']:.0f} s)", file=sys.stderr)
    table = summarise(cells, args.groups)
    (out / "results.json").write_text(json.dumps({"package": args.model, "args": vars(args), "probes": len(probes),
                                                  "wall_seconds": time.time() - t0, "cells": cells}, indent=1))
    (out / "table.md").write_text(table + "\n")
    plot(cells, out / "plot.png", Path(args.model).name)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
