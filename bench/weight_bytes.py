"""Bytes of weights one decode step reads, from a package's graph: the initializers each weight-reading
node takes (MatMulNBits: packed weights, scales, zero points; a MatMul on an initializer: the fp32 side
path of Q4_1 block offsets), the head apart. The embedding gather reads one row per token and is left out.

    python bench/weight_bytes.py PACKAGE [PACKAGE ...]

Prints a markdown table in MiB (the "bytes per token" table of docs/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import onnx

from slm.core.package import read_manifest

MIB = 2 ** 20
COLUMNS = ("layer weights", "their scales", "zero points", "block offsets (side path)", "head")


def weight_bytes(package: Path) -> collections.Counter:
    graph = onnx.load(str(package / read_manifest(package).model_file), load_external_data=False).graph
    size = {t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            for t in graph.initializer}
    logits = read_manifest(package).io.logits
    head_nodes = {n.name for n in graph.node if logits in n.output or any(o.endswith("logits") for o in n.output)}
    out: collections.Counter = collections.Counter()
    for node in graph.node:
        inits = [(slot, name) for slot, name in enumerate(node.input) if name in size]
        if node.op_type == "MatMulNBits":
            head = node.name in head_nodes or any(name.startswith(("embed.", "lm_head")) for _, name in inits)
            for slot, name in inits:
                out["head" if head else COLUMNS[min(slot, 3) - 1]] += size[name]      # inputs: A, B, scales, zero points
        elif node.op_type == "MatMul":
            for _, name in inits:
                out["block offsets (side path)"] += size[name]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="+", type=Path)
    args = ap.parse_args()
    print("| package | " + " | ".join(COLUMNS) + " | total |")
    print("|---|" + "---:|" * (len(COLUMNS) + 1))
    for package in args.packages:
        b = weight_bytes(package)
        print(f"| {package.name} | " + " | ".join(f"{b[c] / MIB:.1f}" for c in COLUMNS) + f" | {sum(b.values()) / MIB:.1f} |")


if __name__ == "__main__":
    main()
