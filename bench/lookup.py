"""Prompt lookup decoding against plain decoding, per kind of request.

    python bench/lookup.py [--model PACKAGE] [--lookup 8] [--repeats 3] [--threads 2]

Lookup drafts from the conversation, so what it gains depends on how much the reply repeats its
context. Six requests, from "continue this text" (the peers benchmark's workload) to an open
question with nothing to copy; each generated greedily with and without lookup, interleaved, in one
process (decode speed only: the same engine and package), medians of the repeats. Reports decode
tokens/s both ways, tokens per graph call, and whether the two runs produced the same tokens.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

from slm.evals.longctx.tasks import DATA as EVAL_DATA

HAYSTACK = EVAL_DATA / "tinyshakespeare" / "input.txt"     # the project's copy of ../shared/data/haystack-tinyshakespeare

CODE = '''def mean_and_spread(xs):
    total = 0
    for x in xs:
        total += x
    mean = total / len(xs)
    spread = max(xs) - min(xs)
    return mean, spread
'''


def requests(text: str) -> dict[str, tuple[str | list[dict], bool]]:
    """name -> (prompt, raw)"""
    passage = text[20_000:21_200]
    return {
        "continue text (raw, 512 tok)": (text[50_000:52_600], True),
        "quote from a passage": ([{"role": "user", "content": f"{passage}\n\nQuote the first four lines of this passage exactly."}], False),
        "summarise a passage": ([{"role": "user", "content": f"{passage}\n\nSummarise this passage in three sentences."}], False),
        "edit code": ([{"role": "user", "content": f"```python\n{CODE}```\n\nRename `total` to `acc` and return the whole function."}], False),
        "list": ([{"role": "user", "content": "List the months of the year, one per line, each with its number of days."}], False),
        "open question": ([{"role": "user", "content": "Why is the sky blue? Explain in a short paragraph."}], False),
    }


def run(engine, prompt, raw: bool, max_tokens: int) -> dict:
    calls = {"n": 0}
    decode, verify = engine.decode_step, engine.verify

    def counted(f):
        def g(*a, **k):
            calls["n"] += 1
            return f(*a, **k)
        return g

    engine.decode_step, engine.verify = counted(decode), counted(verify)
    try:
        t_first, tokens = None, []
        for e in engine.generate(prompt, raw=raw, max_tokens=max_tokens, cache=engine.new_cache()):
            if t_first is None:
                t_first = time.perf_counter()
            tokens.append(e.token)
        dt = time.perf_counter() - t_first
    finally:
        engine.decode_step, engine.verify = decode, verify
    return {"tokens": tokens, "tps": (len(tokens) - 1) / dt if len(tokens) > 1 else 0.0,
            "per_call": (len(tokens) - 1) / max(1, calls["n"])}


def main(argv: list[str] | None = None) -> int:
    from slm.runtime import Engine
    from slm.cli.packages import resolve_package
    import onnxruntime

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--lookup", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    package = resolve_package(args.model)
    engines = {0: Engine(package, threads=args.threads, kv_budget=1024),
               args.lookup: Engine(package, threads=args.threads, kv_budget=1024, lookup=args.lookup)}
    reqs = requests(HAYSTACK.read_text())
    for e in engines.values():      # warm-up
        list(e.generate("warm up", max_tokens=4, cache=e.new_cache()))
    results = {name: {k: [] for k in engines} for name in reqs}
    for r in range(args.repeats):
        for name, (prompt, raw) in reqs.items():
            for k in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
                results[name][k].append(run(engines[k], prompt, raw, args.max_tokens))
                print(f"  {r + 1}/{args.repeats} {name} lookup={k}: {results[name][k][-1]['tps']:.1f} tok/s", file=sys.stderr, flush=True)
    print(f"package {Path(package).name}; {platform.machine()}, threads={args.threads}; python {platform.python_version()}, "
          f"onnxruntime {onnxruntime.__version__}; greedy, up to {args.max_tokens} new tokens (stops at end of "
          f"sequence); {args.repeats} runs each, interleaved, median\n")
    print(f"| request | new tokens | plain decode tok/s | lookup={args.lookup} decode tok/s | speed-up | tokens per graph call | same tokens |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, per in results.items():
        plain, look = per[0], per[args.lookup]
        a, b = statistics.median(x["tps"] for x in plain), statistics.median(x["tps"] for x in look)
        same = plain[0]["tokens"] == look[0]["tokens"]
        first = next((i for i, (x, y) in enumerate(zip(plain[0]["tokens"], look[0]["tokens"])) if x != y), None)
        print(f"| {name} | {len(plain[0]['tokens'])} | {a:.1f} | {b:.1f} | {b / a:.2f}x | "
              f"{statistics.median(x['per_call'] for x in look):.2f} | {'yes' if same else f'no (from token {first})'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
