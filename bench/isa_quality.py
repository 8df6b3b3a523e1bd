"""Quality of quantised packages on this CPU's kernels and on an emulated AVX2-only CPU.

    python bench/isa_quality.py PACKAGE [PACKAGE ...] --reference FP32_PACKAGE [--emulate Haswell]
    python bench/isa_quality.py PKG --reference REF --llamacpp .bench-venvs/llamacpp/bin/python --gguf FILE.gguf

ONNX Runtime (MLAS) picks its MatMulNBits kernels by CPUID: AVX-512 VNNI, AVX-VNNI or AVX2. With
`--emulate CPU` every package also runs under QEMU user mode (`qemu-x86_64 -cpu CPU`, Debian's
qemu-user), whose CPUID reports that CPU, so MLAS takes that CPU's kernels. A probe first shows the
kernel really changed: one MatMulNBits with int8 activations gives other bits emulated than native,
while the fp32-activation kernel's bits agree (the emulator computes faithfully).

Per CPU and package: greedy tokens matching the reference before the first difference (of
--new-tokens, per prompt; mean and standard error; the per-prompt difference to llama.cpp when it
runs, paired), perplexity over held-out windows (relative to the reference), and the answer to
"What is the capital of France?". The reference is a package whose logits match transformers fp32
(tests/test_default_model.py checks that of `slm export default --quant fp32`); it runs natively.
Prompts: Tiny Shakespeare slices (from bench/compare.py's offset) and chat prompts through the
package's template; windows: the end of the same file. Writes results/isa_quality.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slm.evals.longctx.tasks import DATA as EVAL_DATA

ROOT = Path(__file__).resolve().parents[1]
HAYSTACK = EVAL_DATA / "tinyshakespeare" / "input.txt"     # the project's copy of ../shared/data/haystack-tinyshakespeare
PROMPT_OFFSET, HELD_OUT_CHARS = 50_000, 60_000
CHAT = ["Why is the sky blue?", "Write a haiku about the sea.", "What is the capital of France, and why?",
        "Give me three tips for learning to cook.", "Explain recursion to a child.", "What is 17 times 23?",
        "Name three animals that live in the Arctic.", "How do I reverse a list in Python?"]
CAPITAL = "What is the capital of France?"


# --- the worker: runs in this environment, natively or under QEMU (numpy, onnxruntime, tokenizers only) ---
def probe() -> dict:
    """One MatMulNBits at a time on synthetic activations (normal, one channel x30 as LLMs' outliers):
    its output bits, and its error against float64 with int8 (accuracy 4) and fp32 (accuracy 0)
    activations, for 4-bit blocks (the Q4_1/Q4_K kernels) and 8-bit blocks with zero points (Q8_0)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n, k = 512, 576
    x = rng.standard_normal((1, 4, k)).astype(np.float32)
    x[..., 7] *= 30.0
    out = {}
    for bits in (4, 8):
        q = rng.integers(0, 16, (n, k)) if bits == 4 else np.clip(rng.normal(128, 40, (n, k)), 0, 255)
        q = q.astype(np.uint8)
        s = (rng.random((n, k // 32)) * 0.01 + 0.001).astype(np.float32)
        zp = 2 ** (bits - 1)
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)) if bits == 4 else q
        inits = [numpy_helper.from_array(np.ascontiguousarray(packed.reshape(n, k // 32, -1)), "B"),
                 numpy_helper.from_array(s.reshape(-1), "S")]
        if bits == 8:
            inits.append(numpy_helper.from_array(np.full(n * k // 32, zp, np.uint8), "Z"))
        ref = x.astype(np.float64) @ ((q.reshape(n, k // 32, 32).astype(np.float64) - zp) * s[..., None].astype(np.float64)).reshape(n, k).T
        for level in (0, 4):
            node = helper.make_node("MatMulNBits", ["x", "B", "S"] + (["Z"] if bits == 8 else []), ["y"],
                                    domain="com.microsoft", K=k, N=n, bits=bits, block_size=32, accuracy_level=level)
            graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, k])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, n])], inits)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                                      ir_version=10)
            y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            out[f"bits{bits}_accuracy_{level}"] = y.ravel().tolist()
            out[f"bits{bits}_accuracy_{level}_rel_rms_error"] = float(np.sqrt(((y - ref) ** 2).mean() / (ref ** 2).mean()))
    return out


def cpu_seen() -> str:
    """The instruction sets this process detects (QEMU's CPUID under emulation), as numpy reports them."""
    from numpy._core._multiarray_umath import __cpu_features__ as features

    return ",".join(sorted(k for k, v in features.items() if v))


def worker(job: dict) -> dict:
    """One package on this CPU; a result already computed for the same job and CPU is reused
    (results/isa_cache/), and a job's finished prompts and windows are kept as it goes
    (KEY.partial.json), so a killed or repeated run resumes where it stopped."""
    import hashlib

    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(job["package"]).iterdir())
    key = hashlib.sha256((json.dumps([job, files], sort_keys=True) + cpu_seen()).encode()).hexdigest()[:16]
    cached = ROOT / "results" / "isa_cache" / f"{key}.json"
    cached.parent.mkdir(parents=True, exist_ok=True)
    lock = cached.with_suffix(".lock")
    try:
        with lock.open("x") as f:           # another run computing the same job: wait for its result
            f.write(str(os.getpid()))
    except FileExistsError:
        while not cached.is_file() and _alive(lock):
            time.sleep(5)
    if cached.is_file():
        return json.loads(cached.read_text())
    try:
        partial = cached.with_suffix(".partial.json")
        result = compute(job, partial)
        _write(cached, result)
        partial.unlink(missing_ok=True)
    finally:
        lock.unlink(missing_ok=True)
    return result


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _alive(lock: Path) -> bool:
    """Whether the process that holds `lock` still runs (a killed run leaves its lock behind)."""
    try:
        os.kill(int(lock.read_text()), 0)
        return True
    except (ValueError, OSError):
        return False


def compute(job: dict, partial: Path) -> dict:
    """Greedy tokens per prompt, NLL per window and the capital answer; each prompt and window is
    saved to `partial` when done (under QEMU one job takes hours) and skipped when already there."""
    import numpy as np

    from slm.runtime import Engine
    from slm.runtime.decoding import greedy

    engine = Engine(job["package"], threads=job["threads"])
    done = json.loads(partial.read_text()) if partial.is_file() else {"tokens": [], "nll": []}
    tokens, nlls = done["tokens"], done["nll"]
    for ids in job["prompts"][len(tokens):]:
        cache = engine.new_cache(len(ids) + job["new_tokens"] + 8)
        tokens.append(greedy(engine, cache, engine.prefill(cache, ids), job["new_tokens"]))
        _write(partial, {"tokens": tokens, "nll": nlls})
    for ids in job["windows"][len(nlls):]:        # every position's logits in one call (the prefill kernels)
        rows = engine.verify(engine.new_cache(len(ids) + 8), ids[:-1]).astype(np.float64)
        top = rows.max(-1, keepdims=True)
        lse = np.log(np.exp(rows - top).sum(-1)) + top[:, 0]
        nlls.append((lse - rows[np.arange(len(ids) - 1), ids[1:]]).tolist())
        _write(partial, {"tokens": tokens, "nll": nlls})
    capital = "".join(e.text for e in engine.generate(CAPITAL, max_tokens=16, cache=engine.new_cache()))
    return {"tokens": tokens, "nll": nlls, "capital": capital, "probe": probe()}


# --- the driver ------------------------------------------------------------------------------------
def inputs(package: str, n_text: int, window: int, n_windows: int) -> tuple[list, list]:
    from slm.runtime import Engine

    engine = Engine(package, threads=1)
    text, tok = HAYSTACK.read_text(), engine.tokenizer
    prompts = [tok.encode(text[PROMPT_OFFSET + 20_000 * i:PROMPT_OFFSET + 20_000 * i + 1_000],
                          add_special_tokens=False).ids[:64] for i in range(n_text)]
    prompts += [engine.encode(q) for q in CHAT]
    held = tok.encode(text[-HELD_OUT_CHARS:], add_special_tokens=False).ids
    return prompts, [held[i * window:(i + 1) * window] for i in range(n_windows)]


def run(job: dict, prefix: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "job.json"
        path.write_text(json.dumps(job))
        cmd = prefix + [sys.executable, str(Path(__file__).resolve()), "--worker", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT),
                              "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_probes(emulate: list[str]) -> None:
    """The kernel probe on this CPU and under each emulated one, as a table."""
    qemu = shutil.which("qemu-x86_64")
    runs = {}
    for cpu, prefix in [("native", [])] + [(f"QEMU -cpu {c}", [qemu, "-cpu", c]) for c in emulate]:
        proc = subprocess.run(prefix + [sys.executable, str(Path(__file__).resolve()), "--probe-worker"],
                              capture_output=True, text=True, cwd=ROOT)
        runs[cpu] = json.loads(proc.stdout.strip().splitlines()[-1])
    native = runs["native"]
    print(f"host flags: {cpu_flags()}\n")
    print("| CPU (instruction sets numpy detects) | MatMulNBits | activations | output bits differ from native | relative RMS error vs float64 |")
    print("|---|---|---|---|---:|")
    for cpu, r in runs.items():
        avx = "AVX-512" if "AVX512F" in r["cpu_seen"] else "AVX2" if "AVX2" in r["cpu_seen"] else "no AVX2"
        for bits in (4, 8):
            for level, what in ((4, "int8 (accuracy 4)"), (0, "fp32 (accuracy 0)")):
                key = f"bits{bits}_accuracy_{level}"
                differ = "—" if cpu == "native" else ("yes" if r[key] != native[key] else "no")
                print(f"| {cpu} ({avx}) | {bits}-bit, block 32 | {what} | {differ} | {r[key + '_rel_rms_error']:.2e} |")


def llamacpp(python: str, gguf: str, prompts: list, windows: list, new_tokens: int, threads: int) -> dict:
    job = {"mode": "quality", "model": gguf, "prompts": prompts, "windows": windows, "new_tokens": new_tokens,
           "threads": threads}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(job, f)
        f.flush()
        proc = subprocess.run([python, str(ROOT / "bench" / "peers" / "llamacpp.py"), f.name], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"llama.cpp failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(tokens: list[int], ref: list[int]) -> int:
    n = 0
    while n < min(len(tokens), len(ref)) and tokens[n] == ref[n]:
        n += 1
    return n


def mean_se(xs: list[float]) -> str:
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.1f} ± {se:.1f}"


def cpu_flags() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    keep = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return " ".join(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="*")
    ap.add_argument("--reference", help="an fp32 package of the same model (slm export SRC OUT --quant fp32)")
    ap.add_argument("--emulate", nargs="*", default=[], metavar="CPU", help="QEMU CPU models, e.g. Haswell")
    ap.add_argument("--text-prompts", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llamacpp", metavar="PYTHON", help="a Python with llama-cpp-python (bench/compare.py's env)")
    ap.add_argument("--gguf", help="the GGUF the packages came from, for --llamacpp")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "isa_quality.json")
    ap.add_argument("--probe-only", action="store_true", help="only the one-op kernel probe, native and emulated")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--probe-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker.read_text()))))
        return
    if args.probe_worker:
        print(json.dumps({**probe(), "cpu_seen": cpu_seen()}))
        return
    if args.probe_only:
        print_probes(args.emulate)
        return
    if not args.reference or not args.packages:
        ap.error("give one or more PACKAGEs and --reference")
    qemu = shutil.which("qemu-x86_64")
    if args.emulate and not qemu:
        raise SystemExit("--emulate needs qemu-x86_64 (apt-get install qemu-user)")
    prompts, windows = inputs(args.reference, args.text_prompts, args.window, args.windows)
    base = {"prompts": prompts, "windows": windows, "new_tokens": args.new_tokens, "threads": args.threads}
    ref = run({**base, "package": args.reference}, [])
    ref_nll = statistics.fmean(x for w in ref["nll"] for x in w)
    cpus = [("native", [])] + [(f"QEMU -cpu {c}", [qemu, "-cpu", c]) for c in args.emulate]
    rows, peer = [], None
    if args.llamacpp:
        peer = llamacpp(args.llamacpp, args.gguf, prompts, windows, args.new_tokens, args.threads)
        agree = [agreement(t, r) for t, r in zip(peer["tokens"], ref["tokens"])]
        rows.append({"cpu": "native", "system": f"llama.cpp {Path(args.gguf).name}", "agreement": agree,
                     "ppl_ratio": math.exp(statistics.fmean(x for w in peer["nll"] for x in w) - ref_nll), "capital": ""})
    native_probe = None
    for cpu, prefix in cpus:
        for package in args.packages:
            print(f"  {cpu}: {package}", file=sys.stderr, flush=True)
            r = run({**base, "package": package}, prefix)
            native_probe = native_probe or r["probe"]
            agree = [agreement(t, rt) for t, rt in zip(r["tokens"], ref["tokens"])]
            rows.append({"cpu": cpu, "system": package, "agreement": agree, "capital": r["capital"].strip(),
                         "ppl_ratio": math.exp(statistics.fmean(x for w in r["nll"] for x in w) - ref_nll),
                         "probe": {k: v for k, v in r["probe"].items() if k.endswith("error")},
                         "kernel_changed": {k: r["probe"][k] != native_probe[k] for k in r["probe"] if not k.endswith("error")}})
    n = len(prompts)
    print(f"\n`python bench/isa_quality.py {' '.join(sys.argv[1:])}`; host flags: {cpu_flags()}; {n} prompts "
          f"({args.text_prompts} Tiny Shakespeare slices of <=64 tokens, {len(CHAT)} chat) x {args.new_tokens} greedy "
          f"tokens against {args.reference}; perplexity over {args.windows} x {args.window} held-out tokens\n")
    print("| CPU | system | greedy agreement (mean ± SE) | all matched | vs llama.cpp, paired | perplexity vs fp32 | capital of France |")
    print("|---|---|---:|---:|---:|---:|---|")
    peer_agree = rows[0]["agreement"] if peer else None
    for row in rows:
        a = row["agreement"]
        paired = mean_se([x - y for x, y in zip(a, peer_agree)]) if peer_agree and row["system"][:9] != "llama.cpp" else ""
        print(f"| {row['cpu']} | {row['system']} | {mean_se(a)} | {sum(x == args.new_tokens for x in a)}/{n} | {paired} | "
              f"{row['ppl_ratio'] - 1:+.2%} | {row['capital'][:40]} |")
    print("\n| CPU | MatMulNBits | activations | output bits differ from native | relative RMS error vs float64 |")
    print("|---|---|---|---|---:|")
    for cpu in dict.fromkeys(r["cpu"] for r in rows if "probe" in r):
        row = next(r for r in rows if r["cpu"] == cpu and "probe" in r)
        for bits in (4, 8):
            for level, what in ((4, "int8 (accuracy 4)"), (0, "fp32 (accuracy 0)")):
                key = f"bits{bits}_accuracy_{level}"
                print(f"| {cpu} | {bits}-bit, block 32 | {what} | {'—' if cpu == 'native' else row['kernel_changed'][key]} | "
                      f"{row['probe'][key + '_rel_rms_error']:.2e} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python bench/isa_quality.py " + " ".join(sys.argv[1:]),
                                    "flags": cpu_flags(), "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
