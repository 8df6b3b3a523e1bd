"""RSS over a long chat under a KV budget: memory must stay flat however long the conversation.

    python bench/long_chat.py [--model PACKAGE] [--kv-budget 16MiB] [--kv-policy h2o] [--tokens 20000]

A scripted conversation (user turns cut from Tiny Shakespeare, model replies up to --reply tokens)
runs through the engine's chat path until --tokens tokens have gone through the cache. After each
turn it records the tokens seen, cached and evicted, and the process's RSS; prints a table of every
10th turn and a summary line.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path



def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--kv-budget", default="16MiB")
    ap.add_argument("--kv-policy", default="h2o")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--turn-chars", type=int, default=600)
    ap.add_argument("--reply", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from slm.runtime import Engine, SamplingParams
    from slm.evals.longctx.tasks import DATA
    from slm.cli.packages import resolve_package

    package = resolve_package(args.model)
    engine = Engine(package, threads=args.threads, kv_budget=args.kv_budget, kv_policy=args.kv_policy)
    text = (DATA / "tinyshakespeare" / "input.txt").read_text()
    messages = [{"role": "system", "content": "You are a helpful assistant who comments on plays."}]
    params = SamplingParams(temperature=0.7, top_p=0.9, seed=0)
    rows, turn, t0, offset = [], 0, time.time(), 0
    while not rows or rows[-1]["seen"] < args.tokens:
        turn += 1
        messages.append({"role": "user", "content": "Comment on this passage:\n" + text[offset:offset + args.turn_chars]})
        offset += args.turn_chars
        events = list(engine.generate(messages, params=params, max_tokens=args.reply))
        messages.append({"role": "assistant", "content": "".join(e.text for e in events)})
        last = events[-1]
        rows.append({"turn": turn, "seen": len(engine.cache.history), "cached": last.kv.cached_tokens,
                     "capacity": last.kv.capacity_tokens, "evicted": last.kv.evicted_tokens, "rss": rss_mib(),
                     "tps": last.tokens_per_s, "elapsed": time.time() - t0})
        print(f"turn {turn}: {rows[-1]['seen']} tokens seen, {rows[-1]['cached']} cached, RSS {rows[-1]['rss']:.0f} MiB",
              file=sys.stderr)
    import onnxruntime
    print(f"\n{package.name}, --kv-budget {args.kv_budget} ({engine.capacity} tokens, {engine.cache.nbytes / 2**20:.1f} MiB "
          f"of KV), --kv-policy {args.kv_policy}, {args.threads} threads, onnxruntime {onnxruntime.__version__}\n")
    print("| turn | tokens seen | cached | evicted | RSS MiB | decode tok/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["turn"] % 10 == 0 or r is rows[0] or r is rows[-1]:
            print(f"| {r['turn']} | {r['seen']} | {r['cached']} | {r['evicted']} | {r['rss']:.0f} | {r['tps']:.1f} |")
    later = [r["rss"] for r in rows[len(rows) // 5:]]
    print(f"\nRSS after the first fifth of the chat: min {min(later):.0f} MiB, max {max(later):.0f} MiB "
          f"(spread {max(later) - min(later):.0f} MiB) over {rows[-1]['seen']} tokens in {rows[-1]['elapsed']:.0f} s; "
          f"the KV buffer never exceeded {max(r['cached'] for r in rows)} of {engine.capacity} slots")


if __name__ == "__main__":
    main()
