"""A/B: decode speed of two packages of one model on the same engine, interleaved in one process.

    python bench/package_ab.py PACKAGE_A PACKAGE_B [--rounds 10] [--tokens 96] [--threads 2]

Both engines are loaded first; each round decodes the same prompt greedily on each (order alternating
AB, BA, ...), a fresh cache each, `ignore_eos`. Prints each side's tokens/s (first token to last) and the
B/A ratio paired round by round: a package change's cost measured within one run (separate runs of a shared
host differ by more than such a change).
"""
from __future__ import annotations

import argparse
import statistics
import time

from slm.runtime import Engine

PROMPT = "Write a long story about a lighthouse keeper who finds a map."


def decode_tps(engine: Engine, tokens: int) -> float:
    start, n = None, 0
    for _ in engine.generate(PROMPT, max_tokens=tokens, ignore_eos=True, cache=engine.new_cache()):
        start = start or time.perf_counter()
        n += 1
    return (n - 1) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engines = [Engine(p, threads=args.threads, kv_budget=args.tokens + 128) for p in (args.a, args.b)]
    runs: list[list[float]] = [[], []]
    for r in range(args.rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            runs[i].append(decode_tps(engines[i], args.tokens))
    ratios = [b / a for a, b in zip(*runs)]
    print("| side | package | decode tok/s, median (min–max) |\n|---|---|---:|")
    for label, path, xs in (("A", args.a, runs[0]), ("B", args.b, runs[1])):
        print(f"| {label} | {path} | {statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f}) |")
    print(f"\nB/A paired: median {statistics.median(ratios):.3f}, B faster in {sum(x > 1 for x in ratios)} of {len(ratios)} rounds")


if __name__ == "__main__":
    main()
