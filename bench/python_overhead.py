"""What the Python around a decode step costs: one engine, the same prompt, three loops of N tokens —
`Engine.generate` (sampling, detokenising, stop strings, events), a bare `decode_step` + argmax loop,
and bare `run_with_iobinding` calls on the cache's bound decode buffers — interleaved over rounds.

    python bench/python_overhead.py [PACKAGE] [--prompt-tokens 512 --tokens 128 --rounds 3 --threads 2]

Prints a markdown table of milliseconds per token (median over rounds, and min–max).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from slm.runtime import Engine
from slm.cli.packages import resolve_package


def prompt_ids(engine: Engine, n: int) -> list[int]:
    ids = engine.encode("The river carried the lantern past the sleeping town. " * (n // 8 + 1), raw=True)
    return ids[:n]


def generate_ms(engine: Engine, ids: list[int], tokens: int) -> float:
    text = engine.tokenizer.decode(ids)
    cache = engine.new_cache(len(ids) + tokens + 64)
    start = None
    for i, _ in enumerate(engine.generate(text, raw=True, max_tokens=tokens + 1, ignore_eos=True, cache=cache)):
        if i == 0:
            start = time.perf_counter()      # from the first token on: decode steps only
    return (time.perf_counter() - start) / tokens * 1e3


def decode_step_ms(engine: Engine, ids: list[int], tokens: int) -> float:
    cache = engine.new_cache(len(ids) + tokens + 64)
    token = int(np.argmax(engine.prefill(cache, ids)))
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(engine.decode_step(cache, token)))
    return (time.perf_counter() - start) / tokens * 1e3


def bare_graph_ms(engine: Engine, ids: list[int], tokens: int) -> float:
    cache = engine.new_cache(len(ids) + tokens + 64)
    engine.decode_step(cache, int(np.argmax(engine.prefill(cache, ids))))      # binds the decode buffers
    step = engine.decode_binding(cache)
    start = time.perf_counter()
    for _ in range(tokens):
        step.position_ids[0, 0] = cache.next_position
        step.seqlens_k[0] = cache.length
        step.total_len[()] = cache.length + 1
        engine.session.run_with_iobinding(step.binding)
        cache.append(1)
    return (time.perf_counter() - start) / tokens * 1e3


LOOPS = {"Engine.generate": generate_ms, "decode_step + argmax": decode_step_ms, "run_with_iobinding": bare_graph_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", nargs="?", default=None)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engine = Engine(resolve_package(args.package), threads=args.threads)
    ids = prompt_ids(engine, args.prompt_tokens)
    times: dict[str, list[float]] = {name: [] for name in LOOPS}
    for _ in range(args.rounds):
        for name, loop in LOOPS.items():
            times[name].append(loop(engine, ids, args.tokens))
    print(f"{engine.path.name}: {len(ids)}-token prompt, {args.tokens} tokens, {args.threads} threads, "
          f"{args.rounds} interleaved rounds\n")
    print("| loop | ms/token (median) | min–max |")
    print("|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f}–{max(t):.2f} |")


if __name__ == "__main__":
    main()
