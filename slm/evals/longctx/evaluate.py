"""`slm eval longctx`: how well each KV policy keeps what matters, against the bytes it used.

For every (policy, budget) cell a fresh process runs every case (so peak RSS is the cell's own):
budgets are fractions of each prompt's length; 100% is the full cache (no eviction, policy none).
Results: a JSON file, a markdown table and a PNG plot in --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from slm.evals.longctx.tasks import GENERATORS, HAYSTACKS, Case, longeval_lines, make_cases
from slm.runtime.eviction import EVICTING
from slm.core.resources import peak_rss_mib

POLICIES = EVICTING        # namm: when the package has a scorer
BUDGETS = (0.5, 0.25, 0.125)


def build_cases(engine, args) -> list[Case]:
    count = lambda text: len(engine.tokenizer.encode(text, add_special_tokens=False).ids)
    cases = []
    for task in args.tasks:
        for haystack in (("wordlist",) if task == "common_words" else args.haystacks):
            for length in args.lengths:
                cases += make_cases(task, length, haystack, args.samples, count, seed=args.seed)
    for spec in args.longeval:
        lines, n = (int(x) for x in spec.split(":"))
        cases += longeval_lines(lines, n)
    return cases


def run_cell(package: str, policy: str, budget: float, args) -> dict:
    """One (policy, budget): every case, greedy; score, KV bytes, decode speed; peak RSS at the end."""
    from slm.runtime import Engine

    engine = Engine(package, threads=args.threads, kv_policy=policy, protect_chat=False, kv_dtype=args.kv_dtype)
    kv = engine.manifest.kv
    per_token = kv.bytes_per_token(engine.manifest.dims, engine.kv_dtype)
    fixed = kv.fixed_bytes(engine.manifest.dims, engine.kv_dtype)
    rows = []
    for case in build_cases(engine, args):
        prompt = [{"role": "user", "content": case.prompt}] if engine.template else case.prompt
        n_prompt = len(engine.encode(prompt))
        if n_prompt + case.max_tokens > engine.manifest.dims.max_positions:
            rows.append({"task": case.task, "skipped": f"{n_prompt} tokens exceed the model's context"})
            continue
        capacity = n_prompt + case.max_tokens if budget >= 1 else max(16, int(budget * n_prompt))
        cache = engine.new_cache(capacity)
        t0 = time.perf_counter()
        events = list(engine.generate(prompt, max_tokens=case.max_tokens, cache=cache))
        output = "".join(e.text for e in events)
        rows.append({"task": case.task, "haystack": case.haystack, "length": case.length, "prompt_tokens": n_prompt,
                     "capacity": capacity, "kv_bytes": capacity * per_token + fixed, "score": case.score(output),
                     "decode_tps": events[-1].tokens_per_s, "seconds": time.perf_counter() - t0,
                     "evicted": events[-1].kv.evicted_tokens, "output": output[:200]})
    return {"policy": policy if budget < 1 else "full", "budget": budget, "rows": rows, "peak_rss_mib": peak_rss_mib()}


def cases_scored(cells: list[dict]) -> str:
    """'N (K skipped)': the cases a row's means are over, and those left out as longer than the context."""
    counts = {(sum("score" in r for r in c["rows"]), sum("skipped" in r for r in c["rows"])) for c in cells}
    return " / ".join(f"{n} ({k} skipped)" for n, k in sorted(counts))


def summarise(cells: list[dict]) -> str:
    def mean(rows, key):
        vals = [r[key] for r in rows if key in r]
        return statistics.mean(vals) if vals else float("nan")
    budgets = sorted({c["budget"] for c in cells if c["budget"] < 1}, reverse=True)
    full = next(c for c in cells if c["policy"] == "full")
    lines = ["| policy | " + " | ".join(f"score @{b:.1%}" for b in budgets) + " | KV MiB @" + f"{budgets[-1]:.1%}"
             + " | decode tok/s | peak RSS MiB | cases |", "|---|" + "---:|" * (len(budgets) + 4)]
    lines.append("| full cache (100%) | " + " | ".join(f"{mean(full['rows'], 'score'):.3f}" for _ in budgets)
                 + f" | {mean(full['rows'], 'kv_bytes') / 2**20:.1f} | {mean(full['rows'], 'decode_tps'):.1f} | {full['peak_rss_mib']:.0f}"
                 + f" | {cases_scored([full])} |")
    for policy in POLICIES:
        row = [c for c in cells if c["policy"] == policy]
        if not row:
            continue
        by = {c["budget"]: c for c in row}
        low = by.get(budgets[-1], row[0])
        lines.append(f"| {policy} | " + " | ".join(f"{mean(by[b]['rows'], 'score'):.3f}" if b in by else "—" for b in budgets)
                     + f" | {mean(low['rows'], 'kv_bytes') / 2**20:.1f} | {statistics.mean(mean(c['rows'], 'decode_tps') for c in row):.1f}"
                     + f" | {max(c['peak_rss_mib'] for c in row):.0f} | {cases_scored(row)} |")
    tasks = sorted({r["task"] for r in full["rows"]})
    skipped = sum("skipped" in r for r in full["rows"])
    if skipped:
        lines += ["", f"{skipped} of {len(full['rows'])} cases are left out of every mean: longer than the model's "
                      "context (results.json lists them as skipped)."]
    lines += ["", "Per task (score at the smallest budget; full cache first):", "",
              "| task | full | " + " | ".join(p for p in POLICIES if any(c["policy"] == p for c in cells)) + " |",
              "|---|" + "---:|" * (1 + sum(any(c["policy"] == p for c in cells) for p in POLICIES))]
    for t in tasks:
        cells_low = [next((c for c in cells if c["policy"] == p and c["budget"] == budgets[-1]), None)
                     for p in POLICIES if any(c["policy"] == p for c in cells)]
        vals = [mean([r for r in full["rows"] if r["task"] == t], "score")] + \
               [mean([r for r in c["rows"] if r["task"] == t], "score") if c else float("nan") for c in cells_low]
        lines.append(f"| {t} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines)


def plot(cells: list[dict], path: Path, title: str) -> None:
    from slm.evals.plot import plot_by_budget
    full = statistics.mean(r["score"] for r in next(c for c in cells if c["policy"] == "full")["rows"] if "score" in r)
    curves = {}
    for policy in POLICIES:
        pts = sorted((c["budget"], statistics.mean(r["score"] for r in c["rows"] if "score" in r))
                     for c in cells if c["policy"] == policy)
        if pts:
            curves[policy] = [(1.0, full)] + pts[::-1]
    plot_by_budget(curves, path, title=title, ylabel="mean score")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="PACKAGE_OR_SOURCE")
    p.add_argument("--policies", nargs="*", default=None, choices=POLICIES,
                   help="default: all, namm only when the package has an evolved scorer")
    p.add_argument("--budgets", nargs="*", type=float, default=list(BUDGETS), help="fractions of the prompt (< 1)")
    p.add_argument("--tasks", nargs="*", default=list(GENERATORS), choices=list(GENERATORS))
    p.add_argument("--haystacks", nargs="*", default=list(HAYSTACKS), choices=HAYSTACKS)
    p.add_argument("--lengths", nargs="*", type=int, default=[1024, 2048, 4096])
    p.add_argument("--samples", type=int, default=2, help="cases per (task, haystack, length)")
    p.add_argument("--longeval", nargs="*", default=["200:4"], metavar="LINES:N", help="LongEval line-retrieval cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/longctx", help="folder for results.json, table.md, plot.png")
    p.add_argument("--kv-dtype", default=None, metavar="fp32|fp16|int8|int4",
                   help="KV cache storage of every cell (default: the package's); KV MiB counts at it")
    p.add_argument("--cell", nargs=3, metavar=("PACKAGE", "POLICY", "BUDGET"), help=argparse.SUPPRESS)


def default_policies(package: str | Path) -> list[str]:
    """Every policy, namm only when the package has an evolved scorer."""
    from slm.core.package import read_manifest
    return [p for p in POLICIES if p != "namm" or read_manifest(package).namm_file]


def run(args) -> int:
    """The parent: one process per cell, then the table and the plot."""
    if args.cell:
        print(json.dumps(run_cell(args.cell[0], args.cell[1], float(args.cell[2]), args)))
        return 0
    from slm.core.paths import resolve_package, write_atomic
    package = str(resolve_package(args.model))
    if args.policies is None:
        args.policies = default_policies(package)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    passthrough = ["--tasks", *args.tasks, "--haystacks", *args.haystacks, "--lengths", *map(str, args.lengths),
                   "--samples", str(args.samples), "--seed", str(args.seed), "--threads", str(args.threads),
                   "--longeval", *args.longeval] + (["--kv-dtype", args.kv_dtype] if args.kv_dtype else [])
    record = {k: v for k, v in vars(args).items() if k != "func"}
    cells = _resume(out / "results.json", package, record)
    for policy, budget in [("none", 1.0)] + [(p, b) for b in args.budgets for p in args.policies]:
        if any(c["budget"] == budget and c["policy"] == (policy if budget < 1 else "full") for c in cells):
            continue                                    # done by an earlier, interrupted run with these arguments
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "slm.evals.longctx.evaluate", "--cell", package, policy, str(budget),
                               *passthrough], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"cell {policy} @ {budget} failed")
        cells.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        scored = [r["score"] for r in cells[-1]["rows"] if "score" in r]
        skipped = sum("skipped" in r for r in cells[-1]["rows"])
        print(f"[longctx] {policy:9s} @ {budget:6.1%}: score {statistics.mean(scored) if scored else float('nan'):.3f} "
              f"over {len(scored)} cases, {skipped} skipped (over the context) ({time.time() - t0:.0f} s)", file=sys.stderr)
        write_atomic(out / "results.json", json.dumps({"package": package, "args": record, "cells": cells}, indent=1).encode())
    table = summarise(cells)
    (out / "table.md").write_text(table + "\n")
    plot(cells, out / "plot.png", Path(package).name)
    print(table)
    return 0


# what a cell's result depends on; the policies and budgets only say which cells there are, so a run
# that asks for more of them reuses the ones it has
_SAME_RUN = ("tasks", "haystacks", "lengths", "samples", "longeval", "seed", "threads", "kv_dtype")


def _resume(path: Path, package: str, record: dict) -> list[dict]:
    """The cells an interrupted run with the same package and arguments already wrote (each cell is
    saved as soon as it ends); anything else in `path` is kept as results.previous[-N].json, never lost."""
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
        same = old["package"] == package and all(old["args"].get(k) == record.get(k) for k in _SAME_RUN)
    except (ValueError, KeyError, TypeError):
        same = False
    if same:
        print(f"[longctx] resuming {str(path)!r}: {len(old['cells'])} cells already done", file=sys.stderr)
        return old["cells"]
    kept = path.with_name("results.previous.json")
    n = 1
    while kept.exists():                                # an earlier kept run stays too
        n += 1
        kept = path.with_name(f"results.previous-{n}.json")
    path.replace(kept)
    print(f"[longctx] {str(path)!r} held another run; kept as {kept.name}", file=sys.stderr)
    return []


def main() -> int:
    p = argparse.ArgumentParser(prog="slm eval longctx", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
