"""Quality beside speed: greedy agreement with the fp32 reference, and perplexity on held-out text.

    python -m bench.quality                      # every available system of bench/compare.py
    python -m bench.quality --systems "slm int4" "genai int4"

Agreement: for each prompt (Tiny Shakespeare slices and chat-template prompts), how many of the first
32 greedy tokens match transformers fp32 before the first difference. Perplexity: exp(mean NLL) over
windows of held-out Tiny Shakespeare (the end of the file; compare.py's prompts come from its start),
scored one token at a time by peers that only give the last logits. Same token ids for everyone.
Writes results/bench/quality.json (--out).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from pathlib import Path

from bench.compare import HAYSTACK, OUT, PROMPT_OFFSET, System, machine, run_peer, systems

REFERENCE = "transformers fp32"
CHAT = ["Why is the sky blue?", "Write a haiku about the sea.", "What is the capital of France, and why?",
        "Give me three tips for learning to cook."]
HELD_OUT_CHARS = 60_000         # the windows come from the last this-many characters of the haystack


def slm_quality_variants() -> list[System]:
    """Packages only the quality table needs (the speed table has the default int4, RTN, int8 and fp32)."""
    from slm.core.paths import cache_dir
    from slm.core.sources import default_gguf

    return [System("slm int4 acc0", "slm_engine", "main", str(cache_dir() / "bench-gguf-acc0"),
                   "GGUF Q4_1 blocks carried, accuracy_level 0 (fp32 compute)",
                   {"model": str(default_gguf()), "variant": "gguf:0"})]


def inputs(n_text: int, window: int, n_windows: int) -> tuple[list[list[int]], list[list[int]]]:
    from slm.runtime import Engine
    from slm.core.paths import default_package

    engine = Engine(default_package(), threads=1)
    text = HAYSTACK.read_text()
    tok = engine.tokenizer
    room = (len(text) - HELD_OUT_CHARS - PROMPT_OFFSET - 2_000) // 20_000 + 1
    if n_text > room:
        raise SystemExit(f"--text-prompts {n_text}: the haystack holds {room} prompts before the held-out text")
    prompts = [tok.encode(text[PROMPT_OFFSET + 20_000 * i:PROMPT_OFFSET + 20_000 * i + 2_000],
                          add_special_tokens=False).ids[:128] for i in range(n_text)]
    prompts += [engine.encode(q) for q in CHAT]
    held = tok.encode(text[-HELD_OUT_CHARS:], add_special_tokens=False).ids
    if len(held) < window * n_windows:
        raise SystemExit(f"held-out text has {len(held)} tokens, fewer than {n_windows} x {window}")
    windows = [held[i * window:(i + 1) * window] for i in range(n_windows)]
    return prompts, windows


def agreement(tokens: list[int], ref: list[int]) -> int:
    n = 0
    while n < min(len(tokens), len(ref)) and tokens[n] == ref[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="*")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--text-prompts", type=int, default=4, help="Tiny Shakespeare prompts (plus the 4 chat prompts)")
    ap.add_argument("--windows", type=int, default=4, help="held-out windows to score")
    ap.add_argument("--window", type=int, default=512, help="tokens per window")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prepare", action="store_true", help="build the quality-only packages, then stop")
    ap.add_argument("--out", type=Path, default=OUT / "quality.json")
    args = ap.parse_args()
    every = systems()
    every = every[:1] + slm_quality_variants() + every[1:]
    if args.prepare:
        from bench.compare import prepare_all
        prepare_all(slm_quality_variants())
        return
    chosen = [s for s in every if not args.systems or s.name in args.systems or s.name == REFERENCE]
    prompts, windows = inputs(args.text_prompts, args.window, args.windows)
    job = {"mode": "quality", "prompts": prompts, "windows": windows, "new_tokens": args.new_tokens,
           "threads": args.threads}
    results = {}
    for s in sorted(chosen, key=lambda s: s.name != REFERENCE):          # the reference first
        why = s.missing()
        results[s.name] = {"error": f"skipped: {why}"} if why else run_peer(s, job, timeout=3600)
        r = results[s.name]
        print(f"  {s.name}: {r.get('error') or 'done'}", file=sys.stderr, flush=True)
    ref = results[REFERENCE]
    if "error" in ref:
        raise SystemExit(f"the reference {REFERENCE} failed: {ref['error']}")
    ref_ppl = math.exp(statistics.fmean(x for w in ref["nll"] for x in w))
    print(f"\npython -m bench.quality {shlex.join(sys.argv[1:])}\n{len(prompts)} prompts ({len(prompts) - len(CHAT)} "
          f"Tiny Shakespeare slices of 128 tokens, {len(CHAT)} chat prompts) x {args.new_tokens} greedy tokens against "
          f"{REFERENCE}; perplexity over {args.windows} x {args.window} held-out tokens; machine {machine()['cpu']}\n")
    print(f"| system | weights | greedy tokens matching fp32 before the first difference, per prompt | mean | all {args.new_tokens} | perplexity | vs fp32 |")
    print("|---|---|---|---:|---:|---:|---:|")
    table = []
    for s in chosen:
        r = results[s.name]
        if "error" in r:
            print(f"| {s.name} | {s.weights} | {r['error'][:120]} | | | | |")
            continue
        agree = [agreement(t, rt) for t, rt in zip(r["tokens"], ref["tokens"])]
        ppl = math.exp(statistics.fmean(x for w in r["nll"] for x in w))
        table.append({"system": s.name, "agreement": agree, "perplexity": ppl, "version": r["version"]})
        print(f"| {s.name} | {s.weights} | {' '.join(map(str, agree))} | {statistics.fmean(agree):.1f} | "
              f"{sum(a == args.new_tokens for a in agree)}/{len(agree)} | {ppl:.3f} | {ppl / ref_ppl - 1:+.1%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m bench.quality " + shlex.join(sys.argv[1:]),
                                    "machine": machine(), "reference": REFERENCE, "table": table,
                                    "tokens": {k: v.get("tokens") for k, v in results.items()}}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
