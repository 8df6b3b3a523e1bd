"""A package's bytes against its GGUF, and what loading it costs in memory and time.

    python bench/package_memory.py PACKAGE [PACKAGE ...] [--gguf FILE.gguf] [--prompt 512] [--threads 2]

Each package runs in a fresh process (so VmHWM is its own): `Engine(package)`, then one greedy
generation of 16 tokens after a --prompt-token prompt. Per package: the weights file and the whole
folder (MiB, and × the GGUF's size when given), the seconds `Engine()` took, VmRSS after load, VmHWM
after load (the load's own peak: ONNX Runtime's constant folding keeps its intermediates until it is
done) and after the prompt, and the anonymous / file-backed split of RSS after the prompt
(/proc/self/status RssAnon, RssFile). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2 ** 20


def status() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def worker(package: str, prompt: int, threads: int) -> dict:
    import time

    from slm.runtime import Engine
    from slm.runtime.options import EngineOptions
    from slm.runtime.sampling import SamplingParams

    start = time.perf_counter()
    engine = Engine(package, EngineOptions(threads=threads))
    load_s = time.perf_counter() - start
    loaded = status()
    text = " ".join(["word"] * prompt)
    reply = "".join(e.text for e in engine.generate(text, max_tokens=16, raw=True, params=SamplingParams(temperature=0.0)))
    after = status()
    return {"load_s": load_s, "rss_load": loaded["VmRSS"], "hwm_load": loaded["VmHWM"], "hwm": after["VmHWM"],
            "anon": after["RssAnon"], "file": after["RssFile"], "reply": reply[:40]}


def folder_mib(package: Path) -> tuple[float, float]:
    from slm.core.package import read_manifest

    weights = sum(p.stat().st_size for p in package.iterdir() if p.suffix == ".data")
    folder = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    read_manifest(package)          # a clear error for a folder that is not a package
    return weights / MIB, folder / MIB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="+")
    ap.add_argument("--gguf", help="the GGUF the packages came from (its size is the denominator)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.packages[0], args.prompt, args.threads)))
        return
    gguf = Path(args.gguf).stat().st_size / MIB if args.gguf else None
    ratio = lambda v: f" ({v / gguf:.3f}×)" if gguf else ""
    print("| package | weights MiB | folder MiB | load s | RSS after load | peak during load | peak after prompt "
          "| anon / file after prompt |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for package in args.packages:
        weights, folder = folder_mib(Path(package))
        out = subprocess.run([sys.executable, __file__, package, "--worker", "--prompt", str(args.prompt),
                              "--threads", str(args.threads)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(f"{package}: the worker failed:\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {Path(package).name} | {weights:,.1f}{ratio(weights)} | {folder:,.1f}{ratio(folder)} | {r['load_s']:.1f} "
              f"| {r['rss_load']:,.0f} | {r['hwm_load']:,.0f} | {r['hwm']:,.0f} | {r['anon']:,.0f} / {r['file']:,.0f} |",
              flush=True)
    if gguf:
        print(f"\nGGUF: {Path(args.gguf).name}, {gguf:,.1f} MiB; memory in MiB (/proc/self/status), --prompt {args.prompt}, "
              f"--threads {args.threads}")


if __name__ == "__main__":
    main()
