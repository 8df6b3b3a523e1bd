"""Per-token cost of `slm.runtime.sampling.sample` over a full 49,152-entry vocabulary (SmolLM2's), for the
filter chains the CLI and the server use; moved here from the test suite (speed is not a test).

    python bench/sampling.py [--vocab 49152 --seen 2048 --tokens 500 --rounds 3]

Prints a markdown table: median microseconds per sampled token over the rounds, and the fastest round.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from slm.runtime.sampling import SamplingParams, make_rng, sample

CHAINS = {
    "greedy": SamplingParams(temperature=0.0),
    "temperature 0.8": SamplingParams(temperature=0.8, seed=0),
    "top_k 40": SamplingParams(temperature=0.8, top_k=40, seed=0),
    "top_p 0.95": SamplingParams(temperature=0.8, top_p=0.95, seed=0),
    "top_k 40 + top_p 0.95 + min_p 0.05": SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=0),
    "all + repetition_penalty 1.1": SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                                                   repetition_penalty=1.1, seed=0),
}


def per_token_us(params: SamplingParams, logits: np.ndarray, seen: np.ndarray, tokens: int) -> float:
    rng = make_rng(params)
    start = time.perf_counter()
    for _ in range(tokens):
        sample(logits, params, rng, seen=seen)
    return (time.perf_counter() - start) / tokens * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seen", type=int, default=2048, help="tokens already in the conversation (repetition penalty)")
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logits = np.random.default_rng(0).normal(size=args.vocab).astype(np.float32)
    seen = np.arange(args.seen)
    times = {name: [] for name in CHAINS}
    for _ in range(args.rounds):            # chains interleaved, so a busy moment hits them all alike
        for name, params in CHAINS.items():
            times[name].append(per_token_us(params, logits, seen, args.tokens))
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}: vocab {args.vocab}, "
          f"{args.seen} seen tokens, {args.tokens} tokens x {args.rounds} rounds\n")
    print("| filter chain | µs/token (median) | fastest round |")
    print("|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.0f} | {min(t):.0f} |")


if __name__ == "__main__":
    main()
