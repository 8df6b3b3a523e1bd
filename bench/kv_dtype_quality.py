"""The KV cache at fp16 / int8 / int4 against fp32 on one package: perplexity, agreement, re-positioning
error, and decode speed, in one run.

    python bench/kv_dtype_quality.py PACKAGE [--windows 2 --window 2048] [--contexts 512 2048] [--threads 2]
        [--scales absmax headroom mse own]   # a big model: --windows 1 --window 1024 --scales export --contexts

Quality: held-out Tiny Shakespeare (the end of the file, as bench/quality.py; not the export's
calibration text) in windows of --window tokens, fed 256 tokens a call with logits for every
position: perplexity, and how often the argmax matches the fp32 cache's (teacher-forced top-1
agreement); then greedy replies to 4 chat prompts, tokens matching fp32 before the first difference.
Scales of each quantized row: from the export's calibration text (slm/export/kv_calibration.py) by
absolute maximum, by absolute maximum x HEADROOM ("headroom"), or by least squared error ("mse"; what
the export uses: absmax at int8, mse at int4), or "this text's own": the range of the windows' own keys and values (what a per-prompt,
dynamic scale could at best do; the kernel takes fixed scales).
Re-positioning: the windows' real keys, quantized, moved 1,000 positions back by dequantise - rotate -
requantise, against rotating the fp32 keys. Speed: decode tokens/s after each context length, every
dtype in turn within each round (interleaved), median over rounds.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

from slm.runtime import Engine  # noqa: E402
from slm.runtime.kv_quant import dequantize, quantize  # noqa: E402
from slm.export.kv_calibration import HEADROOM, calibration_ids, kv_ranges, measure_kv  # noqa: E402

HAYSTACK = Path(__file__).resolve().parents[1] / "slm/evals/longctx/data/tinyshakespeare/input.txt"
HELD_OUT_CHARS = 60_000
CHAT = ["Why is the sky blue?", "Write a haiku about the sea.", "What is the capital of France, and why?",
        "Give me three tips for learning to cook."]
FEED = 256
QMAX = {"int8": 127, "int4": 7}
CLIP = {"int8": "absmax", "int4": "mse"}       # what the export uses (export.KV_CLIP, KV_HEADROOM 1.0)


def calibrated(samples, dtype: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Scales from the calibration samples: absmax, absmax x HEADROOM, or mse (kv_ranges)."""
    clip, headroom = ("absmax", HEADROOM) if source == "headroom" else (source, 1.0)
    return tuple((np.maximum(r, 1e-6) / QMAX[dtype]).astype(np.float32)
                 for r in kv_ranges(*samples, QMAX[dtype], clip, headroom))


def score_window(engine: Engine, ids: list[int]) -> tuple[np.ndarray, np.ndarray, object]:
    """NLL of each next token and the argmax at each position; the cache that read the window."""
    cache = engine.new_cache(len(ids))
    nll, top = [], []
    for start in range(0, len(ids) - 1, FEED):
        chunk = ids[start:min(start + FEED, len(ids) - 1)]
        logits = engine.verify(cache, chunk)                           # (n, vocab)
        target = np.array(ids[start + 1:start + 1 + len(chunk)])
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        nll.append(-logp[np.arange(len(chunk)), target])
        top.append(logits.argmax(-1))
    return np.concatenate(nll), np.concatenate(top), cache


def greedy(engine: Engine, prompt: str, n: int) -> list[int]:
    return [e.token for e in engine.generate(prompt, max_tokens=n, cache=engine.new_cache(512), ignore_eos=True)]


def prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def text_scales(caches, dims) -> tuple[np.ndarray, np.ndarray]:
    """The windows' own key range (rotation-invariant pair norm) and value range, per layer/head/channel."""
    L, H, D = dims.num_layers, dims.num_kv_heads, dims.head_dim
    k_max, v_max = np.zeros((L, H, D), np.float32), np.zeros((L, H, D), np.float32)
    for c in caches:
        for i in range(L):
            k, v = c.keys[i][0, :, :c.length], c.values[i][0, :, :c.length]
            pair = np.sqrt(k[..., :D // 2] ** 2 + k[..., D // 2:] ** 2).max(1)
            k_max[i] = np.maximum(k_max[i], np.concatenate([pair, pair], -1))
            v_max[i] = np.maximum(v_max[i], np.abs(v).max(1))
    return k_max, v_max


def reposition_error(cache, scales: tuple[np.ndarray, np.ndarray], dtype: str, rope, shift: int = 1000) -> tuple[float, float]:
    """Keys of a real fp32 cache, quantized, rotated back by `shift` positions in float and requantised,
    against the fp32 keys rotated: (RMS error / RMS key, RMS error in code steps)."""
    errs, norms, steps = [], [], []
    for i in range(len(cache.keys)):
        k = cache.keys[i][0, :, :cache.length].astype(np.float64)
        scale = scales[0][i][:, None, :]                                 # (H, 1, hd)
        inv = np.asarray(rope.inv_freq[rope.of_layer[i]], np.float64)
        ang = -shift * inv
        half = k.shape[-1] // 2

        def rot(x):
            return np.concatenate([x[..., :half] * np.cos(ang) - x[..., half:] * np.sin(ang),
                                   x[..., half:] * np.cos(ang) + x[..., :half] * np.sin(ang)], -1)
        moved = dequantize(quantize(rot(dequantize(quantize(k, scale, dtype), scale, dtype)), scale, dtype), scale, dtype)
        ideal = rot(k)
        errs.append(((moved - ideal) ** 2).mean())
        norms.append((ideal ** 2).mean())
        steps.append((((moved - ideal) / scale) ** 2).mean())
    return math.sqrt(np.mean(errs) / np.mean(norms)), math.sqrt(np.mean(steps))


def decode_tps(package: str, dtype: str, context: list[int], steps: int, threads: int) -> float:
    engine = Engine(package, threads=threads, kv_dtype=dtype)
    cache = engine.new_cache(len(context) + steps + 1)
    logits = engine.prefill(cache, context)
    token = int(np.argmax(logits))
    engine.decode_step(cache, token)
    t0 = time.perf_counter()
    for _ in range(steps):
        token = int(np.argmax(engine.decode_step(cache, token)))
    return steps / (time.perf_counter() - t0)


def calibration_samples(engine: Engine, package: str):
    """The export's calibration text through the package's fp32-cache graph (slm/export/kv_calibration.py)."""
    m = engine.manifest
    ids = calibration_ids(lambda text: engine.tokenizer.encode(text).ids,
                          engine.encode if engine.template is not None else None)
    kv = {k: getattr(m.kv, k) for k in ("past_key", "past_value", "present_key", "present_value")}
    return measure_kv(Path(package) / m.model_file, kv, m.dims, ids, m.io, max_len=min(m.dims.max_positions, 1024))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--dtypes", nargs="*", default=["fp32", "fp16", "int8", "int4"])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--contexts", type=int, nargs="*", default=[512, 2048])
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per (dtype, context, round)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scales", nargs="*", choices=["absmax", "headroom", "mse", "own", "export"],
                    default=["absmax", "headroom", "mse", "own"],
                    help="scale sources of each quantized row; export: the package's own scales file")
    a = ap.parse_args()

    import onnxruntime as ort
    engines = {d: Engine(a.package, threads=a.threads, kv_dtype=d) for d in a.dtypes}
    ref = engines["fp32"]
    tok = ref.tokenizer
    held = tok.encode(HAYSTACK.read_text()[-HELD_OUT_CHARS:], add_special_tokens=False).ids
    windows = [held[i * a.window:(i + 1) * a.window] for i in range(a.windows)]
    print(f"package {a.package}; onnxruntime {ort.__version__}; {a.threads} threads; {a.windows} x {a.window} "
          f"held-out Tiny Shakespeare tokens; {len(CHAT)} chat prompts x {a.new_tokens} greedy tokens\n")

    scored = {"fp32": [score_window(ref, w) for w in windows]}
    own = text_scales([s[2] for s in scored["fp32"]], ref.manifest.dims)
    ref_greedy = [greedy(ref, p, a.new_tokens) for p in CHAT]
    rows = []
    calibration = calibration_samples(ref, a.package) if set(a.scales) & {"absmax", "headroom", "mse"} else None
    configs = [(d, None) for d in a.dtypes if d not in QMAX and d != "fp32"]
    configs += [(d, sc) for d in a.dtypes if d in QMAX for sc in a.scales]
    ref_nll = np.concatenate([s[0] for s in scored["fp32"]])
    ref_top = np.concatenate([s[1] for s in scored["fp32"]])
    rows.append(("fp32", "", math.exp(ref_nll.mean()), 1.0, [a.new_tokens] * len(CHAT), ref.new_cache(a.window).nbytes))
    for d, scales in configs:
        engine = engines[d]
        if scales == "own":
            engine.kv_scales = tuple((np.maximum(r, 1e-6) / QMAX[d]).astype(np.float32) for r in own)
        elif scales and scales != "export":
            engine.kv_scales = calibrated(calibration, d, scales)
        res = [score_window(engine, w) for w in windows]
        nll, top = np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])
        agree = [prefix(greedy(engine, p, a.new_tokens), r) for p, r in zip(CHAT, ref_greedy)]
        rows.append((d, {"own": "this text's own (absmax)", "absmax": "calibration text, absmax",
                         "headroom": f"calibration text, absmax x{HEADROOM}",
                         "mse": "calibration text, mse", "export": "the package's", None: ""}[scales],
                     math.exp(nll.mean()), float((top == ref_top).mean()), agree, engine.new_cache(a.window).nbytes))
    base = rows[0][2]
    print(f"| KV cache | scales | perplexity | vs fp32 | top-1 agreement (teacher-forced) | greedy tokens matching fp32 "
          f"(per prompt) | KV bytes at {a.window} tokens |\n|---|---|---:|---:|---:|---|---:|")
    for d, sc, ppl, agree, greedy_match, nbytes in rows:
        print(f"| {d} | {sc} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% | {100 * agree:.1f}% | "
              f"{' '.join(map(str, greedy_match))} | {nbytes / 2**20:.1f} MiB |")

    print("\nRe-positioning 1,000 positions back (dequantise - rotate - requantise), the windows' real keys:\n")
    print("| KV cache | RMS error / RMS key | RMS error in code steps |\n|---|---:|---:|")
    for d in a.dtypes:
        if d in QMAX:
            scales = engines[d].kv_scales if calibration is None else calibrated(calibration, d, CLIP[d])
            rel, steps = reposition_error(scored["fp32"][0][2], scales, d, ref.manifest.rope)
            print(f"| {d} | {rel:.4f} | {steps:.3f} |")
    del engines, scored
    if not a.contexts:
        return

    print(f"\nDecode tokens/s after the context (median of {a.rounds} rounds, {a.steps} steps each, dtypes interleaved):\n")
    print("| context | " + " | ".join(a.dtypes) + " | " + " | ".join(f"{d} / fp32" for d in a.dtypes if d != "fp32")
          + " |\n|---:|" + "---:|" * (2 * len(a.dtypes) - 1))
    for n in a.contexts:
        context = held[:n]
        times = {d: [] for d in a.dtypes}
        for _ in range(a.rounds):
            for d in a.dtypes:
                times[d].append(decode_tps(a.package, d, context, a.steps, a.threads))
        med = {d: statistics.median(v) for d, v in times.items()}
        print(f"| {n} | " + " | ".join(f"{med[d]:.1f}" for d in a.dtypes) + " | "
              + " | ".join(f"{med[d] / med['fp32']:.2f}" for d in a.dtypes if d != "fp32") + " |")


if __name__ == "__main__":
    main()
