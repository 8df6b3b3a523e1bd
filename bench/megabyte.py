"""MEGABYTE against a flat byte-level transformer of the same size and training compute, and SmolLM2.

    python bench/megabyte.py --megabyte PKG --flat PKG --runs RUN_MB RUN_FLAT [--smollm2 PKG] [--threads 2]

For each model, one row: held-out bits per byte on Tiny Shakespeare's last 10% (PyTorch, from the
training run's result.json, 512-byte windows; and through the runtime on the first 8 windows, as a
cross-check), decode bytes/s through the runtime (greedy, 512 bytes after a 256-byte held-out
prompt, median of --repeats), and KV-cache bytes per 1,000 bytes of context: the global cache's
bytes per patch x 1000 / P plus the local cache for MEGABYTE, bytes per token x 1000 for the flat
model, and bytes per token x tokens per 1,000 bytes (its tokenizer on the held-out text) for SmolLM2.
Writes a JSON and a PNG next to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

from slm.evals.longctx.tasks import DATA as EVAL_DATA

ROOT = Path(__file__).resolve().parents[1]
DATA = EVAL_DATA / "tinyshakespeare" / "input.txt"     # the project's copy of ../shared/data/haystack-tinyshakespeare
WINDOW = 512


def held_out(data: bytes) -> bytes:
    return data[int(len(data) * 0.9):]


def _log_softmax_bits(logits: np.ndarray, target: int) -> float:
    m = logits.max()
    return float((m + math.log(np.exp(logits - m).sum()) - logits[target]) / math.log(2))


def runtime_bits(engine, text: bytes, windows: int) -> float:
    """Bits per predicted byte through the runtime, fresh cache per window (as the PyTorch evaluation)."""
    total, count = 0.0, 0
    for w in range(windows):
        data = list(text[w * WINDOW:(w + 1) * WINDOW])
        cache = engine.new_cache()
        if hasattr(engine, "patch_size"):               # MEGABYTE predicts every byte, the first from the pad patch
            logits = engine.prefill(cache, [])
            for b in data:
                total, count = total + _log_softmax_bits(logits, b), count + 1
                logits = engine.decode_step(cache, b)
        else:                                           # the flat model every byte after the first
            rows = engine.verify(cache, data)
            for row, b in zip(rows[:-1], data[1:]):
                total, count = total + _log_softmax_bits(row, b), count + 1
    return total / count


def decode_rate(engine, prompt: str, n: int, repeats: int) -> float:
    from slm.runtime import SamplingParams

    rates = []
    for _ in range(repeats):
        events = list(engine.generate(prompt, raw=True, max_tokens=n, params=SamplingParams(temperature=0.0),
                                      cache=engine.new_cache(), ignore_eos=True))
        rates.append(events[-1].tokens_per_s)
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megabyte", required=True)
    p.add_argument("--flat", required=True)
    p.add_argument("--runs", nargs=2, required=True, metavar=("RUN_MEGABYTE", "RUN_FLAT"))
    p.add_argument("--smollm2", default=None, help="SmolLM2 package (default: the embedded default package)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode-bytes", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "megabyte"))
    args = p.parse_args()

    from tokenizers import Tokenizer

    from slm.runtime import Engine
    from slm.core.package import read_manifest
    from slm.core.paths import default_package

    text = held_out(Path(args.data).read_bytes())
    prompt = text[:256].decode("utf-8", errors="replace")
    rows = []
    for name, package, run in (("MEGABYTE", args.megabyte, args.runs[0]), ("flat", args.flat, args.runs[1])):
        result = json.loads((Path(run) / "result.json").read_text())
        engine = Engine(package, threads=args.threads)
        m = engine.manifest
        if m.patches:
            P = m.patches.patch_size
            kv = m.kv.bytes_per_token(m.dims) * 1000 / P + engine.cache.local.nbytes
        else:
            P, kv = 1, m.kv.bytes_per_token(m.dims) * 1000
        rows.append({"model": name, "parameters": result["parameters"], "patch_size": P,
                     "train_flops": result["train_flops"], "bytes_seen": result["bytes_seen"], "wall_s": result["wall_s"],
                     "held_out_bits_per_byte": result["held_out_bits_per_byte"],
                     "runtime_bits_per_byte_8_windows": runtime_bits(engine, text, 8),
                     "decode_bytes_per_s": decode_rate(engine, prompt, args.decode_bytes, args.repeats),
                     "kv_bytes_per_1000_bytes": kv})
        print(rows[-1], file=sys.stderr)
    smol = Path(args.smollm2) if args.smollm2 else default_package()
    m = read_manifest(smol)
    tokens = len(Tokenizer.from_file(str(smol / m.tokenizer_file)).encode(text.decode("utf-8")).ids)
    engine = Engine(smol, threads=args.threads)
    tok_rate = decode_rate(engine, prompt, 128, args.repeats)
    rows.append({"model": "SmolLM2-135M (" + m.quant.mode + ")", "parameters": None, "patch_size": None,
                 "tokens_per_byte": tokens / len(text), "decode_bytes_per_s": tok_rate * len(text) / tokens,
                 "decode_tokens_per_s": tok_rate,
                 "kv_bytes_per_1000_bytes": m.kv.bytes_per_token(m.dims) * 1000 * tokens / len(text)})
    print(rows[-1], file=sys.stderr)
    import onnxruntime
    report = {"rows": rows, "held_out_bytes": len(text), "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(rows, out.with_suffix(".png"))
    for r in rows:
        params = f"{r['parameters'] / 1e6:.2f}M" if r["parameters"] else "135M"
        print(f"| {r['model']} | {params} | {r.get('held_out_bits_per_byte', float('nan')):.3f} | "
              f"{r['decode_bytes_per_s']:.0f} | {r['kv_bytes_per_1000_bytes'] / 1024:.1f} KiB |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    names = [r["model"] for r in rows]
    panels = (("held-out bits per byte (lower is better)", [r.get("held_out_bits_per_byte", 0) for r in rows]),
              ("decode bytes/s (runtime, CPU)", [r["decode_bytes_per_s"] for r in rows]),
              ("KV KiB per 1,000 bytes of context (log)", [r["kv_bytes_per_1000_bytes"] / 1024 for r in rows]))
    for ax, (title, values) in zip(axes, panels):
        ax.bar(range(len(names)), values, color=["tab:blue", "tab:orange", "tab:gray"][:len(names)])
        ax.set_xticks(range(len(names)), [n.split(" (")[0] for n in names], fontsize=8)
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(values):
            if v:
                ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
