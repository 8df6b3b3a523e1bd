"""Does an fp16 KV cache make decode attention cheaper on this CPU? GroupQueryAttention alone, one
token, SmolLM2's shape (30 layers, 9 query heads, 3 KV heads, head_dim 64), fp32 against fp16 KV with
Casts around each layer as an fp16 cache would need; KV bound in shared-buffer mode as the engine does.

    python bench/gqa_kv_dtype.py [--cached 512 2048] [--threads 2] [--repeats 50]
"""
import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

LAYERS, NH, NKV, HD = 30, 9, 3, 64
QKV = (NH + 2 * NKV) * HD


def graph(kv_type: int, capacity: int) -> bytes:
    """30 GroupQueryAttention nodes in a row; each layer's packed QKV is the previous output, padded."""
    np_type = np.float16 if kv_type == TensorProto.FLOAT16 else np.float32
    rope = np.random.default_rng(0).random((8192, HD // 2)).astype(np_type)
    inits = [numpy_helper.from_array(rope, "cos"), numpy_helper.from_array(rope, "sin"),
             numpy_helper.from_array(np.array([0, 0, 0, 0, 0, QKV - NH * HD], np.int64), "pads")]
    inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [1, 1, QKV]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total", TensorProto.INT32, []),
              helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 1])]
    nodes, outputs, x = [], [], "qkv"
    for i in range(LAYERS):
        q = x
        if kv_type == TensorProto.FLOAT16:
            nodes.append(helper.make_node("Cast", [x], [f"q16.{i}"], to=TensorProto.FLOAT16))
            q = f"q16.{i}"
        for kv in ("k", "v"):
            inputs.append(helper.make_tensor_value_info(f"past.{i}.{kv}", kv_type, [1, NKV, capacity, HD]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", kv_type, [1, NKV, capacity, HD]))
        nodes.append(helper.make_node("GroupQueryAttention", [q, "", "", f"past.{i}.k", f"past.{i}.v", "seqlens_k",
                                                              "total", "cos", "sin", "pos"],
                                      [f"attn.{i}", f"present.{i}.k", f"present.{i}.v"], domain="com.microsoft",
                                      num_heads=NH, kv_num_heads=NKV, do_rotary=1))
        a = f"attn.{i}"
        if kv_type == TensorProto.FLOAT16:
            nodes.append(helper.make_node("Cast", [a], [f"a32.{i}"], to=TensorProto.FLOAT))
            a = f"a32.{i}"
        nodes.append(helper.make_node("Pad", [a, "pads"], [f"x.{i}"]))       # (1, 1, 576) -> (1, 1, 960)
        x = f"x.{i}"
    outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 1, QKV]))
    model = helper.make_model(helper.make_graph(nodes, "gqa", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def time_decode(kv_type: int, cached: int, threads: int, repeats: int) -> float:
    np_type = np.float16 if kv_type == TensorProto.FLOAT16 else np.float32
    capacity = cached + 1
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(graph(kv_type, capacity), so, providers=["CPUExecutionProvider"])
    io = s.io_binding()
    rng = np.random.default_rng(0)
    bufs = {}
    for i in range(LAYERS):
        for kv in ("k", "v"):
            buf = bufs[i, kv] = (rng.standard_normal((1, NKV, capacity, HD)) * 0.1).astype(np_type)
            io.bind_cpu_input(f"past.{i}.{kv}", buf)
            io.bind_output(f"present.{i}.{kv}", "cpu", 0, np_type, list(buf.shape), buf.ctypes.data)
    io.bind_cpu_input("qkv", rng.standard_normal((1, 1, QKV)).astype(np.float32))
    io.bind_cpu_input("seqlens_k", np.array([cached], np.int32))
    io.bind_cpu_input("total", np.array(cached + 1, np.int32))
    io.bind_cpu_input("pos", np.array([[cached]], np.int64))
    io.bind_output(s.get_outputs()[-1].name)
    for _ in range(5):
        s.run_with_iobinding(io)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s.run_with_iobinding(io)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cached", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    a = p.parse_args()
    print(f"onnxruntime {ort.__version__}, {a.threads} threads, median of {a.repeats} one-token steps\n")
    print("| cached tokens | fp32 KV ms | fp16 KV ms | fp16 / fp32 |\n|---:|---:|---:|---:|")
    for n in a.cached:
        f32, f16 = (time_decode(t, n, a.threads, a.repeats) for t in (TensorProto.FLOAT, TensorProto.FLOAT16))
        print(f"| {n} | {f32:.2f} | {f16:.2f} | {f16 / f32:.2f} |")


if __name__ == "__main__":
    main()
