"""Does mapping ONNX Runtime's saved prepacked weights lower a package's peak RSS? (docs/BENCHMARKS.md, session 13)

    python -m bench.prepacked_mmap PACKAGE [--prompt 512] [--rounds 2] [--cache /tmp/slm-prepacked]

First ONNX Runtime writes the package's graph optimized, with the buffers it prepacks for MatMulNBits in an
external data file (`session.save_external_prepacked_constant_initializers=1`). Then, in a fresh process per
variant and round: `Engine(package)` as shipped ("heap": prepacked at load), or the same Engine whose session
opens the saved graph with optimizations off ("mapped": the prepacked buffers are file pages); a --prompt-token
prompt + 16 tokens, then 64 greedy tokens of the capital question. Prints peak RSS, the anonymous / file-backed
split, load seconds, decode tokens/s and the reply, then what is resident after load by mapping
(/proc/self/smaps). A probe: it swaps the Engine's session opener in its worker.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.package_memory import MIB, ROOT, status


def resident_by_mapping(top: int = 6) -> list[tuple[str, float]]:
    """Resident MiB per mapping (/proc/self/smaps): [heap], anonymous maps, each file; the largest first."""
    rss, name = {}, "?"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            name = head[5] if len(head) > 5 else "[anonymous maps]"
        elif line.startswith("Rss:"):
            rss[name] = rss.get(name, 0.0) + int(head[1]) / 1024
    return sorted(rss.items(), key=lambda kv: -kv[1])[:top]


def save_prepacked(graph: Path, cache: Path, threads: int) -> None:
    import onnxruntime as ort

    cache.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.optimized_model_filepath = str(cache / graph.name)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", graph.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def worker(package: str, variant: str, cache: Path, prompt: int, threads: int) -> dict:
    import onnxruntime as ort

    import slm.runtime.engine as engine_module
    from slm.runtime import Engine
    from slm.runtime.options import EngineOptions
    from slm.runtime.sampling import SamplingParams

    if variant == "prepare":      # the graph the Engine opens, saved with its prepacked buffers; then as shipped
        shipped = engine_module.open_session

        def save_then_open(model_path, provider="auto", threads=None):
            save_prepacked(Path(model_path), cache, threads or 2)
            return shipped(model_path, provider, threads)
        engine_module.open_session = save_then_open
    if variant == "mapped":
        def open_saved(model_path, provider="auto", threads=None):
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # already optimized
            options.log_severity_level = 3
            options.intra_op_num_threads = threads or 2
            options.inter_op_num_threads = 1
            saved = cache / Path(model_path).name
            session = ort.InferenceSession(str(saved), options, providers=["CPUExecutionProvider"])
            return session, "cpu", "the saved prepacked graph"
        engine_module.open_session = open_saved
    start = time.perf_counter()
    engine = Engine(package, EngineOptions(threads=threads))
    load_s = time.perf_counter() - start
    loaded = resident_by_mapping()
    greedy = SamplingParams(temperature=0.0)
    "".join(e.text for e in engine.generate(" ".join(["word"] * prompt), max_tokens=16, raw=True, params=greedy))
    after = status()
    start, reply, tokens = time.perf_counter(), "", 0
    for event in engine.generate("What is the capital of France?", max_tokens=64, params=greedy):
        reply, tokens = reply + event.text, tokens + 1
    return {"load_s": load_s, "hwm": after["VmHWM"], "anon": after["RssAnon"], "file": after["RssFile"],
            "tok_s": tokens / (time.perf_counter() - start), "reply": reply.strip()[:60], "after_load": loaded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/slm-prepacked", help="where the saved graph and its data go")
    ap.add_argument("--worker", choices=["prepare", "heap", "mapped"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    cache = Path(args.cache)
    if args.worker:
        print(json.dumps(worker(args.package, args.worker, cache, args.prompt, args.threads)))
        return

    def run(variant: str) -> dict:
        command = [sys.executable, "-m", "bench.prepacked_mmap", args.package, "--worker", variant,
                   "--cache", str(cache), "--prompt", str(args.prompt), "--threads", str(args.threads)]
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(f"{variant}: the worker failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    run("prepare")
    saved = sum(p.stat().st_size for p in cache.iterdir()) / MIB
    print(f"saved graph + its prepacked data: {saved:,.1f} MiB in {cache}\n")
    print("| variant | round | peak RSS MiB | anon / file MiB | load s | tok/s (64, incl. prefill) | reply |\n"
          "|---|---:|---:|---:|---:|---:|---|")
    loaded = {}
    for round_ in range(1, args.rounds + 1):
        for variant in ("heap", "mapped"):
            r = run(variant)
            loaded.setdefault(variant, r["after_load"])
            print(f"| {variant} | {round_} | {r['hwm']:,.0f} | {r['anon']:,.0f} / {r['file']:,.0f} | {r['load_s']:.2f} "
                  f"| {r['tok_s']:.1f} | {r['reply']} |", flush=True)
    for variant, mappings in loaded.items():
        print(f"\nresident after load, {variant} (MiB by mapping): " + ", ".join(f"{n} {m:.1f}" for n, m in mappings))


if __name__ == "__main__":
    main()
