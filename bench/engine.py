"""Engine benchmark: decode tokens/s, time to first token and peak RSS, per package and prompt length.

    python bench/engine.py                       # default package at int4 (GGUF blocks) and fp32
    python bench/engine.py --packages A B --prompt-lens 128 512 --new-tokens 128 --repeats 5

Each measurement runs in a fresh process (so peak RSS is that run's own), runs are interleaved
across packages, and the table shows medians with min-max spread. Writes nothing but stdout.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from slm.evals.longctx.tasks import DATA as EVAL_DATA

HAYSTACK = EVAL_DATA / "tinyshakespeare" / "input.txt"     # the project's copy of ../shared/data/haystack-tinyshakespeare


def one_run(package: str, prompt_len: int, new_tokens: int, threads: int, kv_policy: str = "none") -> dict:
    """Child process: load, one warm-up, one measured generation; print JSON. The KV budget is the
    run's own size (prompt + new tokens), so no eviction happens and a policy that needs attention
    statistics measures just the cost of computing them."""
    from slm.runtime import Engine

    t0 = time.perf_counter()
    engine = Engine(package, threads=threads, kv_budget=prompt_len + new_tokens + 8, kv_policy=kv_policy)
    load_s = time.perf_counter() - t0
    text = HAYSTACK.read_text()[50_000:50_000 + prompt_len * 8]
    ids = engine.tokenizer.encode(text, add_special_tokens=False).ids[:prompt_len]
    prompt = engine.tokenizer.decode(ids)
    list(engine.generate("warm up", raw=True, max_tokens=4, cache=engine.new_cache()))
    events = list(engine.generate(prompt, raw=True, max_tokens=new_tokens, ignore_eos=True, cache=engine.new_cache()))
    last = events[-1]
    return {"package": Path(package).name + ("" if kv_policy == "none" else f" +{kv_policy}"),
            "quant": engine.manifest.quant.mode, "prompt_tokens": last.prompt_tokens,
            "new_tokens": last.generated_tokens, "ttft_s": last.ttft_s, "decode_tps": last.tokens_per_s,
            "prefill_tps": last.prompt_tokens / last.ttft_s, "load_s": load_s,
            "peak_rss_mib": peak_rss_mib(),
            "size_mib": sum(f.stat().st_size for f in Path(package).iterdir()) / 2 ** 20}


def default_packages() -> list[str]:
    from slm.core.package import MANIFEST
    from slm.core.paths import cache_dir, default_package
    from slm.core.sources import resolve_source

    int4 = default_package()
    fp32 = cache_dir() / "smollm2-135m-instruct-fp32"
    if not (int4 / MANIFEST).is_file() or not (fp32 / MANIFEST).is_file():
        from slm.export import build_package
        from slm.export.load import load_model
        source = resolve_source(None)
        model, tok = load_model(source)
        if not (int4 / MANIFEST).is_file():
            build_package(source, int4, model=model, tokenizer=tok)
        if not (fp32 / MANIFEST).is_file():
            build_package(source, fp32, quant="fp32", model=model, tokenizer=tok)
    return [str(int4), str(fp32)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packages", nargs="*", default=None)
    ap.add_argument("--prompt-lens", nargs="*", type=int, default=[128, 512])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-policies", nargs="*", default=["none"],
                    help="also run with these policies (h2o: the attention-statistics graph)")
    ap.add_argument("--one", nargs=2, metavar=("PACKAGE", "PROMPT_LEN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], int(args.one[1]), args.new_tokens, args.threads, args.kv_policies[0])))
        return
    packages = args.packages or default_packages()
    configs = [(pkg, policy) for pkg in packages for policy in args.kv_policies]
    runs: dict[tuple, list[dict]] = {}
    for r in range(args.repeats):                       # interleaved: config order alternates per repeat
        for n in args.prompt_lens:
            for pkg, policy in (configs if r % 2 == 0 else configs[::-1]):
                out = subprocess.run([sys.executable, __file__, "--one", pkg, str(n), "--new-tokens", str(args.new_tokens),
                                      "--threads", str(args.threads), "--kv-policies", policy],
                                     capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                runs.setdefault((res["package"], n), []).append(res)
                print(f"  run {r + 1}/{args.repeats} {res['package']} prompt {n}: {res['decode_tps']:.1f} tok/s, "
                      f"TTFT {res['ttft_s']:.3f} s", file=sys.stderr)

    import numpy, onnxruntime
    print(f"\nmachine: {platform.machine()}, {platform.processor() or 'cpu'}, threads={args.threads}; "
          f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}; "
          f"{args.repeats} runs each, median (min-max)\n")
    print("| package | quant | prompt | new | decode tok/s | TTFT s | prefill tok/s | peak RSS MiB | size MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (pkg, n), rs in runs.items():
        def cell(key, fmt):
            v = [x[key] for x in rs]
            return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}-{fmt.format(max(v))})"
        print(f"| {pkg} | {rs[0]['quant']} | {n} | {rs[0]['new_tokens']} | {cell('decode_tps', '{:.1f}')} | "
              f"{cell('ttft_s', '{:.3f}')} | {cell('prefill_tps', '{:.0f}')} | {cell('peak_rss_mib', '{:.0f}')} | "
              f"{rs[0]['size_mib']:.0f} |")


if __name__ == "__main__":
    main()
