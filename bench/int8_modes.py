"""int8 two ways, side by side: 8-bit MatMulNBits (slm's `--quant int8`) vs ONNX Runtime's dynamic
quantisation (`quantize_dynamic`, MatMulInteger) of the fp32 package.

    python bench/int8_modes.py [--repeats 3]

Needs the packages bench/engine.py and bench/compare.py --prepare build (fp32 and int8 in the cache).
Prints decode tokens/s (median of interleaved runs) and greedy agreement with fp32 over 64 tokens.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

PROMPT = "Write a story about a robot learning to paint."


def dynamic_int8(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slm.core.package import read_manifest, write_manifest

    if (out / "model.onnx").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy(fp32 / "tokenizer.json", out)
    quantize_dynamic(str(fp32 / "model.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"], extra_options={"DefaultTensorType": 1})
    m = read_manifest(fp32)
    write_manifest(out, replace(m, attention_model_file="",
                                quant=replace(m.quant, mode="int8", notes="onnxruntime quantize_dynamic")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from slm.runtime import Engine
    from slm.core.paths import cache_dir

    fp32 = cache_dir() / "smollm2-135m-instruct-fp32"
    packages = {"MatMulNBits int8": cache_dir() / "bench-int8",
                "dynamic int8 (MatMulInteger)": dynamic_int8(fp32, cache_dir() / "bench-int8-dynamic")}
    ref = [e.token for e in Engine(fp32, threads=2, kv_budget=512).generate(PROMPT, max_tokens=64, ignore_eos=True)]
    runs = {k: [] for k in packages}
    for r in range(args.repeats):
        for name, pkg in (list(packages.items()) if r % 2 == 0 else list(packages.items())[::-1]):
            engine = Engine(pkg, threads=2, kv_budget=512)
            list(engine.generate("warm up", max_tokens=4, cache=engine.new_cache()))
            events = list(engine.generate(PROMPT, max_tokens=64, ignore_eos=True, cache=engine.new_cache()))
            runs[name].append((events[-1].tokens_per_s, [e.token for e in events]))
    print("| int8 mode | decode tok/s (median, runs) | greedy agreement with fp32 (of 64) | size MiB |")
    print("|---|---:|---:|---:|")
    for name, rs in runs.items():
        toks = rs[0][1]
        agree = next((i for i, (a, b) in enumerate(zip(toks, ref)) if a != b), len(ref))
        size = sum(f.stat().st_size for f in packages[name].iterdir()) / 2 ** 20
        print(f"| {name} | {statistics.median(t for t, _ in rs):.1f} ({', '.join(f'{t:.1f}' for t, _ in rs)}) | "
              f"{agree} | {size:.0f} |")


if __name__ == "__main__":
    main()
