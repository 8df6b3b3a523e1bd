"""Peak RSS of a long budgeted prefill: the plain graph against the attention-statistics graph at
several prefill chunk sizes (what the default `slm.runtime.engine.STATS_PREFILL_CHUNK` trades).

    python bench/stats_rss.py [--model PACKAGE] [--prompt 3900] [--budget 2048] [--chunks 128 64 32 16]

Each row is a fresh process (peak RSS = its VmHWM): load the engine, prefill the first --prompt
tokens of Tiny Shakespeare through a --budget-token cache under the policy, decode 16 tokens.
Prints a markdown table with the seconds the prefill + decode took (one run: a rough figure).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time



def one(args: argparse.Namespace) -> None:
    from slm.runtime import Engine
    from slm.runtime.decoding import greedy
    from slm.core.resources import peak_rss_mib
    from slm.evals.longctx.tasks import DATA

    engine = Engine(args.model, threads=args.threads, kv_budget=args.budget, kv_policy=args.policy,
                    prefill_chunk=args.chunk)
    text = (DATA / "tinyshakespeare" / "input.txt").read_text()[:6 * args.prompt]
    ids = engine.encode(text, raw=True)[:args.prompt]
    t = time.perf_counter()
    cache = engine.new_cache()
    greedy(engine, cache, engine.prefill(cache, ids), 16)
    seconds = time.perf_counter() - t
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "seconds": seconds, "prompt": len(ids), "evicted": cache.evicted}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompt", type=int, default=3900)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--chunks", type=int, nargs="+", default=[128, 64, 32, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="h2o", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=512, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        from slm.core.paths import default_package
        args.model = str(default_package())
    if args.one:
        return one(args)
    rows = [("streaming", 512, "plain (model.onnx)")] + [("h2o", c, "attention statistics (model_attn.onnx)") for c in args.chunks]
    print(f"model {args.model}; prompt {args.prompt} tokens, KV budget {args.budget} tokens, {args.threads} thread(s)\n")
    print("| policy | graph | prefill chunk | peak RSS MiB | s (prefill + 16 tokens) |")
    print("|---|---|---:|---:|---:|")
    for policy, chunk, graph in rows:
        out = subprocess.run([sys.executable, __file__, "--one", "--model", args.model, "--prompt", str(args.prompt),
                              "--budget", str(args.budget), "--threads", str(args.threads), "--policy", policy,
                              "--chunk", str(chunk)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {policy} | {graph} | {chunk} | {r['peak_rss_mib']:.0f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
