"""Which MatMulNBits make a package drift from fp32: int8 activations (accuracy_level 4) one projection
kind at a time, against the same package with fp32 activations everywhere (accuracy_level 0: the
carried blocks' exact logits, tests/test_default_model.py).

    python bench/int8_attribution.py PACKAGE [--tokens 256] [--prompt "What is the capital of France?"]

For each variant a copy of PACKAGE's graph with accuracy levels rewritten per node (the weights file is
copied beside it, ONNX Runtime refuses links out of the folder): mean KL(fp32 || variant) and top-1
agreement over held-out Tiny Shakespeare (two windows), and the top two first tokens of the reply to
the prompt with their logits. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from slm.runtime import Engine
from slm.core.package import read_manifest

from slm.evals.longctx.tasks import DATA as EVAL_DATA

HAYSTACK = EVAL_DATA / "tinyshakespeare" / "input.txt"     # the project's copy of ../shared/data/haystack-tinyshakespeare
OFFSETS = (200_000, 400_000)
VARIANTS = {                                    # label -> accuracy level of a node, by its name
    "fp32 activations everywhere (reference)": lambda name: 0,
    "int8 activations everywhere (the package)": lambda name: 4,
    "int8 except the head": lambda name: 0 if name in ("embed", "lm_head") else 4,
    "int8 except q/k/v": lambda name: 0 if "qkv" in name or name.endswith(("q_proj", "k_proj", "v_proj")) else 4,
    "int8 except o": lambda name: 0 if "o_proj" in name else 4,
    "int8 except gate/up": lambda name: 0 if "gate" in name or "up_proj" in name else 4,
    "int8 except down": lambda name: 0 if "down_proj" in name else 4,
    "int8 in the head only": lambda name: 4 if name in ("embed", "lm_head") else 0,
}


def variant(package: Path, out: Path, level) -> Path:
    out.mkdir(parents=True)
    for f in package.iterdir():
        if f.suffix != ".onnx":
            shutil.copy(f, out / f.name)
    for f in package.glob("*.onnx"):
        m = onnx.load(str(f), load_external_data=False)
        for node in m.graph.node:
            if node.op_type == "MatMulNBits":
                for a in node.attribute:
                    if a.name == "accuracy_level":
                        a.i = level(node.name)
        onnx.save(m, str(out / f.name))
    return out


def all_logits(package: Path, ids: list[int]) -> np.ndarray:
    m = read_manifest(package)
    s = ort.InferenceSession(str(package / m.model_file), providers=["CPUExecutionProvider"])
    n = len(ids)
    feeds = {m.io.input_ids: np.array([ids], np.int64), m.io.position_ids: np.arange(n, dtype=np.int64)[None],
             m.io.seqlens_k: np.array([n - 1], np.int32), m.io.total_sequence_length: np.array(n, np.int32),
             m.io.num_logits_to_keep: np.array(n, np.int64)}
    for name in m.kv.past_key + m.kv.past_value:
        feeds[name] = np.zeros((1, m.dims.num_kv_heads, n, m.dims.head_dim), np.dtype(m.kv.dtype))
    return s.run([m.io.logits], feeds)[0][0].astype(np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--variants", type=int, default=len(VARIANTS), help="only the first N rows (2: the package itself)")
    args = ap.parse_args()
    engine = Engine(args.package, threads=2)
    text = HAYSTACK.read_text()
    windows = [engine.tokenizer.encode(text[o:o + 4 * args.tokens], add_special_tokens=False).ids[:args.tokens] for o in OFFSETS]
    prompt = engine.encode(args.prompt)
    print(f"`python bench/int8_attribution.py {args.package} --tokens {args.tokens}`\n")
    print("| variant | KL(fp32 ‖ variant), mean | top-1 agreement | first token of the reply (logit) |")
    print("|---|---:|---:|---|")
    ref = None
    with tempfile.TemporaryDirectory() as d:
        for i, (label, level) in enumerate(list(VARIANTS.items())[:args.variants]):
            pkg = variant(args.package, Path(d) / str(i), level)
            logits = [all_logits(pkg, w) for w in windows]
            first = all_logits(pkg, prompt)[-1]
            if ref is None:
                ref = logits
            kl = np.mean([(np.exp(log_softmax(r)) * (log_softmax(r) - log_softmax(x))).sum(-1).mean() for r, x in zip(ref, logits)])
            top1 = np.mean([(r.argmax(-1) == x.argmax(-1)).mean() for r, x in zip(ref, logits)])
            best = np.argsort(first)[::-1][:2]
            tops = ", ".join(f"{engine.tokenizer.decode([int(t)])!r} ({first[t]:.2f})" for t in best)
            print(f"| {label} | {kl:.5f} | {top1:.3f} | {tops} |", flush=True)
            shutil.rmtree(pkg)


if __name__ == "__main__":
    main()
