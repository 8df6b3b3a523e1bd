"""What one decode step (M = 1) costs through ONNX Runtime's MatMulNBits for each way of carrying a
block-quantised weight: bits, block size, zero points, and the fp32 side path of float block offsets.

    python bench/matmulnbits_layouts.py [--shapes 17920x1536 1536x8960] [--calls 300] [--threads 2]

For each layout and weight shape (N x K) it prints the median microseconds per call, the bytes of the
graph's initializers per weight (bits/weight), and how much the process RSS grew when the session was
created (the kernel's pre-packed copy), per weight. Each layout is measured over copies of the weight
whose bytes add up to --mib, so that a call streams them from memory as a decode step does. Random
weights: only the layout is measured, not numerics.
"""
from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def graph(n: int, k: int, copies: int, lay) -> onnx.ModelProto:
    """`copies` weights of one layout side by side, their outputs summed: a step reads them all from
    memory as a model's layers do (one weight alone would stay in the last-level cache)."""
    inits, nodes = [], []
    for c in range(copies):
        i, o = branch(n, k, c, lay)
        inits += i
        nodes += o
    nodes.append(helper.make_node("Sum", [f"y{c}" for c in range(copies)], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, n])
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return m


def branch(n: int, k: int, c: int, lay) -> tuple[list, list]:
    rng = np.random.default_rng(c)
    inits, nodes = [], []
    if lay is None:
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"w{c}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{c}"], [f"y{c}"]))
    elif lay == SPLIT_6BIT:         # 6-bit codes as a 4-bit low plane plus a 2-bit high plane, two kernels summed
        for part, bits in (("lo", 4), ("hi", 2)):
            i, o = branch(n, k, c, (bits, 16, True, False))
            rename = {f"y{c}": f"{part}{c}", f"q{c}": f"q{part}{c}", f"s{c}": f"s{part}{c}", f"zp{c}": f"zp{part}{c}"}
            for t in i:
                t.name = rename.get(t.name, t.name)
            for node in o:
                node.input[:] = [rename.get(x, x) for x in node.input]
                node.output[:] = [rename.get(x, x) for x in node.output]
            inits += i
            nodes += o
        nodes.append(helper.make_node("Add", [f"lo{c}", f"hi{c}"], [f"y{c}"]))
    else:
        bits, block, zp, side = lay
        nb = k // block
        q = rng.integers(0, 256, (n, nb, block * bits // 8), dtype=np.uint8)
        inits += [numpy_helper.from_array(q, f"q{c}"),
                  numpy_helper.from_array(rng.random(n * nb).astype(np.float32) * 0.01, f"s{c}")]
        ins = ["x", f"q{c}", f"s{c}"]
        if zp == "float":
            inits.append(numpy_helper.from_array(rng.random(n * nb).astype(np.float32) * 15, f"zp{c}"))
            ins.append(f"zp{c}")
        elif zp:
            zbytes = n * ((nb * bits + 7) // 8) if bits < 8 else n * nb
            inits.append(numpy_helper.from_array(rng.integers(0, 256, zbytes, dtype=np.uint8), f"zp{c}"))
            ins.append(f"zp{c}")
        out = f"main{c}" if side else f"y{c}"
        nodes.append(helper.make_node("MatMulNBits", ins, [out], domain="com.microsoft", K=k, N=n, bits=bits,
                                      block_size=block, accuracy_level=4))
        if side:
            inits += [numpy_helper.from_array(np.array([0, 0, nb, block], np.int64), f"shape{c}"),
                      numpy_helper.from_array(np.array([-1], np.int64), f"axes{c}"),
                      numpy_helper.from_array(rng.standard_normal((nb, n)).astype(np.float32) * 0.01, f"off{c}")]
            nodes += [helper.make_node("Reshape", ["x", f"shape{c}"], [f"blocks{c}"]),
                      helper.make_node("ReduceSum", [f"blocks{c}", f"axes{c}"], [f"sums{c}"], keepdims=0),
                      helper.make_node("MatMul", [f"sums{c}", f"off{c}"], [f"side{c}"]),
                      helper.make_node("Add", [f"main{c}", f"side{c}"], [f"y{c}"])]
    return inits, nodes


SPLIT_6BIT = "split"

LAYOUTS = {   # name: (bits, block, zero points: False | True (uint8) | "float", fp32 side path of float offsets)
    "fp32 MatMul": None,
    "4-bit b32, float offsets (Q4_1/Q4_K carry)": (4, 32, False, True),
    "4-bit b32, symmetric": (4, 32, False, False),
    "4-bit b32, uint8 zero points": (4, 32, True, False),
    "4-bit b32, float zero points": (4, 32, "float", False),
    "4-bit b64, symmetric": (4, 64, False, False),
    "4-bit b64, uint8 zero points": (4, 64, True, False),
    "4-bit b128, symmetric": (4, 128, False, False),
    "8-bit b16, uint8 zero points (Q6_K carry)": (8, 16, True, False),
    "8-bit b16, symmetric": (8, 16, False, False),
    "8-bit b32, symmetric (Q8_0 carry)": (8, 32, False, False),
    "8-bit b64, symmetric": (8, 64, False, False),
    "2-bit b16, uint8 zero points": (2, 16, True, False),
    "6-bit b16 as 4-bit + 2-bit planes, two kernels (Q6_K at 6 bits)": SPLIT_6BIT,
}


def measure(model: onnx.ModelProto, k: int, calls: int, threads: int) -> tuple[float, float, float]:
    data = model.SerializeToString()
    bits_per_weight = sum(t.ByteSize() for t in model.graph.initializer) * 8
    gc.collect()
    before = rss_mib()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    del data
    gc.collect()
    grew = rss_mib() - before
    x = np.random.default_rng(1).standard_normal((1, 1, k)).astype(np.float32)
    for _ in range(20):
        sess.run(None, {"x": x})
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6, bits_per_weight, grew


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["17920x1536", "1536x8960"], help="N x K")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mib", type=float, default=256, help="weight bytes per step, spread over copies")
    a = p.parse_args(argv)
    print(f"onnxruntime {ort.__version__}, {a.threads} threads, M = 1, median of {a.calls} calls over ~{a.mib:g} MiB of weights\n")
    head = "| layout | " + " | ".join(f"{s}: µs/call | bits/weight | RSS MiB" for s in a.shapes) + " |"
    print(head)
    print("|---|" + "---:|---:|---:|" * len(a.shapes))
    for name, lay in LAYOUTS.items():
        cells = []
        for s in a.shapes:
            n, k = map(int, s.split("x"))
            bits = 32 if lay is None else 6 + 64 / 16 if lay == SPLIT_6BIT else lay[0] + 32 / lay[1]
            copies = max(1, round(a.mib * 2 ** 23 / (n * k * bits)))
            us, nbytes_bits, grew = measure(graph(n, k, copies, lay), k, a.calls, a.threads)
            cells.append(f"{us / copies:.0f} | {nbytes_bits / (n * k * copies):.2f} | {grew / copies:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
