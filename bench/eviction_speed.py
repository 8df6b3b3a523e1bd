"""Decode speed under eviction, policies interleaved: a prompt several times the KV budget, then new
tokens, so every policy evicts during prefill and decode (same engine settings, same text).

    python bench/eviction_speed.py [PACKAGE] [--budget 256 --new-tokens 128 --rounds 2]
"""
from __future__ import annotations

import argparse
import statistics

from slm.runtime import Engine
from slm.cli.packages import resolve_package


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", nargs="?", default=None)
    ap.add_argument("--policies", nargs="+", default=["streaming", "h2o", "tova", "snapkv", "namm"])
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    package = resolve_package(args.package)
    engines = {p: Engine(package, threads=args.threads, kv_budget=args.budget, kv_policy=p) for p in args.policies}
    prompt = "Tell me a very long story about a dragon, a lantern and a river. " * 30
    speeds: dict[str, list[float]] = {p: [] for p in args.policies}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            events = list(engine.generate(prompt, max_tokens=args.new_tokens))
            speeds[name].append(events[-1].tokens_per_s)
            evicted = events[-1].kv.evicted_tokens
    n = len(next(iter(engines.values())).encode(prompt))
    print(f"{package.name}: {n}-token prompt, --kv-budget {args.budget}, {args.new_tokens} new tokens, "
          f"{args.threads} threads, {args.rounds} interleaved rounds ({evicted} tokens evicted per run)\n")
    print("| policy | decode tok/s (median) | min–max |")
    print("|---|---:|---:|")
    for name, s in speeds.items():
        print(f"| {name} | {statistics.median(s):.1f} | {min(s):.1f}–{max(s):.1f} |")


if __name__ == "__main__":
    main()
