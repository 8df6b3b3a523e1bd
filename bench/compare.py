"""Side-by-side benchmark: slm against onnxruntime-genai, llama.cpp, Optimum ONNX and transformers.

    python bench/compare.py --prepare            # build each peer's model from the same GGUF (once)
    python bench/compare.py                      # prompts of 128/512/2048 tokens, 128 new, 3 repeats
    python bench/compare.py --systems slm-int4 genai-int4 --prompt-lens 512 --repeats 5

Every peer runs in its own virtual environment under .bench-venvs/ (a missing one is skipped with a
note; bench/peers/*.py say how each is driven). Every measurement is a fresh process (peak RSS is that
run's own), on the same prompt token ids, the same number of new greedy tokens (end-of-sequence
ignored) and the same thread count; runs are interleaved (the order of systems rotates each repeat)
and the table shows medians with min-max spread. Writes OUT.json and OUT.png (--out; default
results/bench/compare, an ignored folder); docs/BENCHMARKS.md holds each run's table with its command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from slm.evals.longctx.tasks import DATA as EVAL_DATA

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
VENVS = ROOT / ".bench-venvs"
HAYSTACK = EVAL_DATA / "tinyshakespeare" / "input.txt"     # the project's copy of ../shared/data/haystack-tinyshakespeare
PROMPT_OFFSET = 50_000          # prompts start here in the haystack; bench/quality.py scores text after it
OUT = ROOT / "results" / "bench"      # raw runs; docs/ holds their tables
QWEN_GGUF = Path.home() / ".cache" / "slm" / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_PACKAGE = Path.home() / ".cache" / "slm" / "packages" / "qwen2.5-coder-1.5b"
OV_INT4 = ("optimum-cli export openvino --weight-format int4 (NNCF data-free: int4 asym, group 128, ratio 1.0, "
           "embedding and head int8_asym); CPU plugin defaults")


def bench_dir() -> Path:
    """Where peers' models are built ($SLM_BENCH_DIR overrides)."""
    from slm.core.paths import cache_dir
    return Path(os.environ.get("SLM_BENCH_DIR") or cache_dir().parent / "bench")


@dataclass(frozen=True)
class System:
    name: str           # row label
    peer: str           # bench/peers/<peer>.py
    venv: str           # "main" or a folder under .bench-venvs/
    model: str          # package folder, GGUF file, ONNX folder or HF folder
    weights: str        # what the weights are, in words
    prepare: dict | None = None     # the job that builds `model`, run by the same peer: {"model": .., "variant": ..}
    options: dict = field(default_factory=dict)     # extra settings of the speed job, e.g. {"lookup": 8}
    family: str = "smollm2"     # which model: the prompt ids come from that family's slm package's tokenizer

    @property
    def python(self) -> Path:
        return Path(sys.executable) if self.venv == "main" else VENVS / self.venv / "bin" / "python"

    def missing(self) -> str | None:
        if not self.python.exists():
            return f"no environment {self.python.parent.parent} (see docs/BENCHMARKS.md, Peers)"
        if not Path(self.model).exists() or self.stale():
            return f"no current model at {self.model} (run `python bench/compare.py --prepare`)"
        return None

    def stale(self) -> bool:
        """An slm package written by an older exporter than this checkout reads (re-exported by --prepare)."""
        if self.peer != "slm_engine":
            return False
        from slm.core.errors import PackageError
        from slm.core.package import read_manifest
        try:
            read_manifest(Path(self.model))
        except PackageError:
            return True
        return False


def systems() -> list[System]:
    from slm.core.paths import cache_dir, default_package
    from slm.core.sources import default_gguf

    b, pk, gguf = bench_dir(), cache_dir(), str(default_gguf())
    hf = str(b / "smollm2-135m-instruct-hf")

    def slm(name, folder, weights, variant, source=gguf, head_topk=0, family="smollm2", max_positions=0, **options):
        prepare = {"model": source, "variant": variant, **({"head_topk": head_topk} if head_topk else {}),
                   **({"max_positions": max_positions} if max_positions else {})}
        return System(name, "slm_engine", "main", str(folder), weights, prepare, options, family)

    return [
        slm("slm int4", default_package(), "GGUF Q4_1 blocks carried (embedding Q8_0), accuracy_level 4", "gguf:4"),
        # the same GGUF exported by session 7's code (commit 8abe89b: float32 scales, no down-projection outliers),
        # kept for the A/B that says whether this session's package decodes slower; not re-made by --prepare
        System("slm int4 (session 7)", "slm_engine", "main", str(pk / "bench-gguf-s7"),
               "as slm int4, exported by commit 8abe89b (`git worktree add … 8abe89b`, then its `slm export`)"),
        slm("slm compact", pk / "bench-compact", "the Q4_1 GGUF re-quantised by `--quant compact`: 4-bit blocks of 64, "
            "integer zero points, importance-weighted fit; tied table at 8 bits; accuracy_level 4", "compact:4"),
        slm("slm int4 topk", pk / "bench-gguf-topk32", "as slm int4, the tied head read at 4 bits and its top 32 logits "
            "re-scored from the Q8_0 table (export --head-topk 32)", "gguf:4", head_topk=32),
        slm("slm int4 RTN", pk / "bench-int4-rtn", "int4 RTN block 32, float zero points on each block's min-max (side path), 8-bit embedding", "int4:4"),
        slm("slm int8", pk / "bench-int8", "int8 RTN block 32", "int8:4"),
        slm("slm fp32", pk / "smollm2-135m-instruct-fp32", "fp32", "fp32"),
        System("genai int4", "genai", "genai", str(b / "genai-int4"), "its builder: -p int4 -e cpu", {"model": hf, "variant": "int4"}),
        System("genai fp32", "genai", "genai", str(b / "genai-fp32"), "its builder: -p fp32 -e cpu", {"model": hf, "variant": "fp32"}),
        System("llama.cpp Q4_1", "llamacpp", "llamacpp", gguf, "the shipped GGUF (Q4_1, embedding Q8_0)"),
        # the KV cache's own dtype (docs/LONGCTX.md, "A quantized KV cache"): slm's --kv-dtype on a package whose
        # rotary table holds 8,192 prompt tokens + the new ones (the default package's stops at 8,192), against
        # llama.cpp's type_k/type_v (GGML f16, q8_0, q4_0; a quantized V cache needs flash attention)
        *(slm(f"slm int4 kv-{d}", pk / "bench-gguf-16k", f"as slm int4, rotary table 16,384 (export --max-positions "
              f"16384), KV cache {d}", "gguf:4", max_positions=16384, kv_dtype=d) for d in ("fp32", "fp16", "int8", "int4")),
        *(System(f"llama.cpp Q4_1 {t} KV", "llamacpp", "llamacpp", gguf, f"the shipped GGUF; type_k = type_v = GGML {t}, "
                 "flash_attn=True", options={"kv_type": t, "flash_attn": True}) for t in ("f16", "q8_0", "q4_0")),
        System("llama.cpp Q4_0", "llamacpp", "llamacpp", str(b / "smollm2-135m-instruct-Q4_0.gguf"),
               "Q4_0 requantised from the Q4_1 GGUF by llama.cpp", {"model": gguf, "variant": "Q4_0"}),
        System("llama.cpp Q8_0", "llamacpp", "llamacpp", str(b / "smollm2-135m-instruct-Q8_0.gguf"),
               "Q8_0 requantised from the Q4_1 GGUF by llama.cpp", {"model": gguf, "variant": "Q8_0"}),
        slm("slm Q4_0", pk / "bench-gguf-q4_0", "the llama.cpp Q4_0 GGUF's blocks carried, accuracy_level 4", "gguf:4",
            source=str(b / "smollm2-135m-instruct-Q4_0.gguf")),
        # prompt lookup decoding (speculative, drafts from the context; greedy output as without it):
        # slm's Engine(lookup=8) and llama-cpp-python's LlamaPromptLookupDecoding(num_pred_tokens=8)
        slm("slm int4 +lookup", default_package(), "as slm int4; prompt lookup decoding, up to 8 drafted tokens", "gguf:4",
            lookup=8),
        System("llama.cpp Q4_1 +lookup", "llamacpp", "llamacpp", gguf,
               "the shipped GGUF; LlamaPromptLookupDecoding(num_pred_tokens=8)", options={"lookup": 8}),
        # the real-size model (../shared/models/get-qwen2.5-coder-1.5b.sh): slm carries the Q4_K_M GGUF's blocks,
        # llama.cpp reads the same file, genai builds int4 from the HF folder transformers makes of that GGUF
        slm("slm 1.5B Q4_K_M", QWEN_PACKAGE, "Qwen2.5-Coder-1.5B GGUF Q4_K_M blocks carried, accuracy_level 4",
            "gguf:4", source=str(QWEN_GGUF), family="qwen1.5b"),
        System("slm 1.5B Q4_K_M (session 7)", "slm_engine", "main", str(pk / "qwen2.5-coder-1.5b-teacher"),
               "as slm 1.5B Q4_K_M, exported by session 7's code (the distillation teacher's package)", family="qwen1.5b"),
        slm("slm 1.5B compact", pk / "qwen2.5-coder-1.5b-compact", "the Q4_K_M GGUF re-quantised by `--quant compact`: "
            "4-bit blocks of 64, integer zero points, importance-weighted fit, accuracy_level 4", "compact:4",
            source=str(QWEN_GGUF), family="qwen1.5b"),
        System("llama.cpp 1.5B Q4_K_M", "llamacpp", "llamacpp", str(QWEN_GGUF), "the Q4_K_M GGUF", family="qwen1.5b"),
        System("genai int4 1.5B", "genai", "genai", str(b / "genai-int4-qwen1.5b"), "its builder: -p int4 -e cpu",
               {"model": str(b / "qwen2.5-coder-1.5b-hf"), "variant": "int4"}, family="qwen1.5b"),
        # OpenVINO GenAI on IR that optimum-intel exports from the same HF folders (bench/peers/ov_genai.py):
        # optimum-intel's default int4 config (asym, group 128, ratio 1.0, embedding and head int8_asym); SmolLM2's
        # 576-channel layers are not a multiple of 128, so they take group 64 (--group-size-fallback adjust)
        System("openvino int4", "ov_genai", "openvino", str(b / "openvino-int4"), OV_INT4 + "; 576-channel inputs group 64 "
               "(--group-size-fallback adjust)", {"model": hf, "variant": "int4", "args": ["--group-size-fallback", "adjust"]}),
        System("openvino 1.5B int4", "ov_genai", "openvino", str(b / "openvino-int4-qwen1.5b"), OV_INT4,
               {"model": str(b / "qwen2.5-coder-1.5b-hf"), "variant": "int4"}, family="qwen1.5b"),
        System("optimum fp32", "optimum_ort", "optimum", str(b / "optimum-fp32"), "its ONNX export, fp32", {"model": hf, "variant": "fp32"}),
        System("transformers fp32", "hf_eager", "main", hf, "fp32, eager attention"),
    ]


def run_peer(system: System, job: dict, timeout: int = 1800) -> dict:
    """Run one job in a fresh process of the system's own environment; return its JSON (or {"error": ...})."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"model": system.model, **job}, f)
    try:
        # slm's own peer runs this checkout's code (the others their own environment's)
        env = dict(os.environ, PYTHONPATH=str(ROOT)) if system.peer == "slm_engine" else None
        proc = subprocess.run([str(system.python), str(PEERS / f"{system.peer}.py"), f.name],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    finally:
        os.unlink(f.name)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1][:300]}
    return json.loads(lines[-1])


def prepare_all(chosen: list[System]) -> None:
    qwen_hf = bench_dir() / "qwen2.5-coder-1.5b-hf"
    if any(s.family == "qwen1.5b" for s in chosen) and QWEN_GGUF.is_file() and not (qwen_hf / "config.json").is_file():
        from slm.export.load import load_model
        from slm.core.sources import resolve_source
        model, tok = load_model(resolve_source(str(QWEN_GGUF)))
        model.save_pretrained(qwen_hf)
        tok.save_pretrained(qwen_hf)
        del model
        print(f"wrote {qwen_hf}", file=sys.stderr)
    hf = bench_dir() / "smollm2-135m-instruct-hf"
    if not (hf / "config.json").is_file():        # the HF folder the peers' own exporters read
        from slm.export.load import load_model
        from slm.core.sources import resolve_source
        model, tok = load_model(resolve_source(None))
        model.save_pretrained(hf)
        tok.save_pretrained(hf)
        print(f"wrote {hf}", file=sys.stderr)
    config = json.loads((hf / "config.json").read_text())
    if "rope_theta" not in config and "rope_parameters" in config:
        # transformers 5 writes rope_parameters only; optimum's transformers 4.x reads rope_theta and
        # would silently fall back to 10,000 (SmolLM2 uses 100,000)
        config["rope_theta"] = config["rope_parameters"]["rope_theta"]
        (hf / "config.json").write_text(json.dumps(config, indent=2))
    for s in chosen:
        if s.prepare is None or (Path(s.model).exists() and not s.stale()):
            continue
        if not s.python.exists():
            print(f"skip {s.name}: no environment {s.python.parent.parent}", file=sys.stderr)
            continue
        Path(s.model).parent.mkdir(parents=True, exist_ok=True)
        res = run_peer(s, {"mode": "prepare", "out": s.model, **s.prepare})
        print(f"{s.name}: {res}", file=sys.stderr)


def prompt_ids(n: int, family: str = "smollm2") -> list[int]:
    """The first n tokens of the haystack from PROMPT_OFFSET on, by the model's own tokenizer."""
    from slm.core.paths import default_package
    from tokenizers import Tokenizer

    package = default_package() if family == "smollm2" else QWEN_PACKAGE
    tok = Tokenizer.from_file(str(package / "tokenizer.json"))
    ids = tok.encode(HAYSTACK.read_text()[PROMPT_OFFSET:PROMPT_OFFSET + n * 8], add_special_tokens=False).ids[:n]
    if len(ids) < n:
        raise SystemExit(f"the haystack gives only {len(ids)} tokens from {PROMPT_OFFSET}; ask for fewer")
    return ids


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg": os.getloadavg()[0], "platform": platform.platform()}


def context_for(prompt_len: int, new_tokens: int) -> int:
    """KV slots for one run: prompt + new tokens rounded up to 256 (every peer sizes its cache to the run)."""
    return -(-(prompt_len + new_tokens) // 256) * 256


def measure(chosen: list[System], prompt_lens: list[int], new_tokens: int, threads: int, repeats: int) -> list[dict]:
    rows = []
    for r in range(repeats):
        for n in prompt_lens:
            ids = {f: prompt_ids(n, f) for f in {s.family for s in chosen}}
            k = (r * 3 + n) % len(chosen)                      # rotate the order every repeat and length
            for s in chosen[k:] + chosen[:k]:
                res = run_peer(s, {"mode": "speed", "ids": ids[s.family], "new_tokens": new_tokens, "threads": threads,
                                   "ctx": context_for(n, new_tokens), **s.options})
                res.update(system=s.name, prompt_len=n, repeat=r)
                rows.append(res)
                what = res.get("error") or f"{res['decode_tps']:.1f} tok/s, TTFT {res['ttft_s']:.3f} s, {res['peak_rss_mib']:.0f} MiB"
                print(f"  run {r + 1}/{repeats} prompt {n} {s.name}: {what}", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict], chosen: list[System]) -> list[dict]:
    """Median and spread per (system, prompt length), plus model size on disk."""
    from slm.core.resources import size_mib

    out = []
    for s in chosen:
        for n in sorted({r["prompt_len"] for r in rows}):
            ok = [r for r in rows if r["system"] == s.name and r["prompt_len"] == n and "error" not in r]
            errors = [r["error"] for r in rows if r["system"] == s.name and r["prompt_len"] == n and "error" in r]
            entry = {"system": s.name, "weights": s.weights, "prompt_len": n, "runs": len(ok), "errors": errors,
                     "size_mib": size_mib(s.model) if not s.model.endswith("-hf") else size_mib(Path(s.model) / "model.safetensors")}
            for key in ("decode_tps", "ttft_s", "prefill_tps", "peak_rss_mib", "load_s"):
                v = [r[key] for r in ok]
                entry[key] = {"median": statistics.median(v), "min": min(v), "max": max(v)} if v else None
            entry["version"] = ok[0]["version"] if ok else None
            entry["tokens"] = ok[0]["tokens"] if ok else None
            out.append(entry)
    return out


def markdown(summary: list[dict]) -> str:
    def cell(e, key, fmt):
        v = e[key]
        return "—" if v is None else f"{fmt.format(v['median'])} ({fmt.format(v['min'])}–{fmt.format(v['max'])})"

    lines = ["| system | prompt | decode tok/s | TTFT s | prefill tok/s | peak RSS MiB | size MiB | runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in sorted(summary, key=lambda e: (e["prompt_len"], -(e["decode_tps"] or {"median": 0})["median"])):
        lines.append(f"| {e['system']} | {e['prompt_len']} | {cell(e, 'decode_tps', '{:.1f}')} | {cell(e, 'ttft_s', '{:.3f}')} | "
                     f"{cell(e, 'prefill_tps', '{:.0f}')} | {cell(e, 'peak_rss_mib', '{:.0f}')} | {e['size_mib']:.0f} | "
                     f"{e['runs']}{' (' + str(len(e['errors'])) + ' failed)' if e['errors'] else ''} |")
    return "\n".join(lines)


def ratios(summary: list[dict]) -> list[str]:
    """slm int4 (and the 1.5B) against the peers the issue sets targets for, per prompt length (median over median)."""
    med = {(e["system"], e["prompt_len"]): e for e in summary if e["decode_tps"]}
    openvino = {"slm int4": ("openvino int4",), "slm compact": ("openvino int4",),      # OpenVINO GenAI, same bits
                "slm 1.5B Q4_K_M": ("openvino 1.5B int4",), "slm 1.5B compact": ("openvino 1.5B int4",)}
    lines = []
    pairs = {"slm int4": ("genai int4", "llama.cpp Q4_1", "llama.cpp Q4_0"),
             "slm compact": ("llama.cpp Q4_1", "llama.cpp Q4_0", "genai int4"),
             "slm 1.5B Q4_K_M": ("llama.cpp 1.5B Q4_K_M", "genai int4 1.5B"),
             "slm 1.5B compact": ("llama.cpp 1.5B Q4_K_M", "genai int4 1.5B"),
             **{f"slm int4 kv-{d}": ("llama.cpp Q4_1", "llama.cpp Q4_1 f16 KV", "llama.cpp Q4_1 q8_0 KV",
                                     "llama.cpp Q4_1 q4_0 KV") for d in ("fp32", "fp16", "int8", "int4")}}
    for n in sorted({e["prompt_len"] for e in summary}):
        for mine, peers in pairs.items():
            me = med.get((mine, n))
            for peer in peers + openvino.get(mine, ()) if me else ():
                p = med.get((peer, n))
                if p:
                    lines.append(f"prompt {n}: {mine} / {peer}: decode {me['decode_tps']['median'] / p['decode_tps']['median']:.2f}x, "
                                 f"TTFT {me['ttft_s']['median'] / p['ttft_s']['median']:.2f}x, "
                                 f"peak RSS {me['peak_rss_mib']['median'] / p['peak_rss_mib']['median']:.2f}x")
    return lines


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(e["system"] for e in summary))
    lens = sorted({e["prompt_len"] for e in summary})
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    width = 0.8 / len(names)
    for ax, key, label in zip(axes, ("decode_tps", "ttft_s", "peak_rss_mib"),
                              ("decode tokens/s (higher is better)", "time to first token, s (lower is better)",
                               "peak RSS, MiB (lower is better)")):
        for i, name in enumerate(names):
            es = [next((e for e in summary if e["system"] == name and e["prompt_len"] == n), None) for n in lens]
            med = [e[key]["median"] if e and e[key] else 0 for e in es]
            lo = [m - e[key]["min"] if e and e[key] else 0 for m, e in zip(med, es)]
            hi = [e[key]["max"] - m if e and e[key] else 0 for m, e in zip(med, es)]
            ax.bar([j + i * width for j in range(len(lens))], med, width, yerr=[lo, hi], capsize=2, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lens))], [f"{n}-token prompt" for n in lens])
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="*", help="row names to run (default: every available one)")
    ap.add_argument("--prompt-lens", nargs="*", type=int, default=[128, 512, 2048])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prepare", action="store_true", help="build the peers' models that are missing, then stop")
    ap.add_argument("--out", type=Path, default=OUT / "compare", help="writes OUT.json and OUT.png")
    ap.add_argument("--package", nargs="*", default=[], metavar="NAME=PATH",
                    help="more slm rows: a package folder under a row name (e.g. an older export, for an A/B run)")
    args = ap.parse_args()
    every = systems()
    for spec in args.package:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_dir():
            raise SystemExit(f"--package {spec!r}: expected NAME=PATH with PATH a package folder")
        every.append(System(name, "slm_engine", "main", path, f"the package at {path}"))
        if args.systems is not None:
            args.systems.append(name)           # a row asked for by --package is run
    unknown = set(args.systems or ()) - {s.name for s in every}
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; known: {[s.name for s in every]}")
    chosen = [s for s in every if not args.systems or s.name in args.systems]
    if args.prepare:
        prepare_all(chosen)
        return
    skipped = {s.name: s.missing() for s in chosen if s.missing()}
    for name, why in skipped.items():
        print(f"skip {name}: {why}", file=sys.stderr)
    chosen = [s for s in chosen if s.name not in skipped]
    if not chosen:
        raise SystemExit("every system asked for was skipped (above); nothing to measure")
    before = machine()
    rows = measure(chosen, args.prompt_lens, args.new_tokens, args.threads, args.repeats)
    after = machine()
    summary = summarise(rows, chosen)
    meta = {"command": "python bench/compare.py " + shlex.join(sys.argv[1:]), "machine": before,
            "loadavg_after": after["loadavg"], "threads": args.threads, "new_tokens": args.new_tokens,
            "repeats": args.repeats, "skipped": skipped,
            "versions": {e["system"]: e["version"] for e in summary if e["version"]},
            "weights": {s.name: s.weights for s in chosen}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1))
    title = (f"SmolLM2-135M-Instruct, {args.threads} threads, {args.new_tokens} new greedy tokens, "
             f"median of {args.repeats} (bars: min-max); {before['cpu']}, {before['cores']} cores")
    plot(summary, args.out.with_suffix(".png"), title)
    print(f"\n{meta['command']}\nmachine: {before['cpu']}, {before['cores']} cores, python {before['python']}; "
          f"load average {before['loadavg']:.2f} before, {after['loadavg']:.2f} after; {args.threads} threads, "
          f"{args.new_tokens} new tokens, {args.repeats} runs each, median (min–max)\n")
    print(markdown(summary))
    print()
    for name, v in meta["versions"].items():
        print(f"- {name}: {v}; {meta['weights'][name]}")
    for name, why in skipped.items():
        print(f"- {name}: skipped ({why})")
    print()
    print("\n".join(ratios(summary)))
    print(f"\nwrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
