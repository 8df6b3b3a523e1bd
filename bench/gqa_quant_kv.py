"""Which quantized KV caches does ONNX Runtime's CPU GroupQueryAttention kernel run, and how close is
each to the fp32 cache? One GroupQueryAttention node at SmolLM2's head shape (9 query heads, 3 KV
heads, head_dim 64), packed QKV in fp32, past and present bound to one buffer as the engine binds them,
fed a 16-token prompt chunk, an 8-token second chunk and 8 one-token decode steps; every call's output
(and the attention probabilities, with qk_output) is compared with the same calls on an fp32 cache.

    python bench/gqa_quant_kv.py

Scales are the absolute maximum of the fp32 run's rotated keys / values (per channel: per KV head and
dimension) over the quantized range: the best a calibration can do, so an error here is the cache
format's, not the calibration's. A row that fails prints ONNX Runtime's first message line.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes  # noqa: F401 - float8 numpy types, if installed
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

NH, NKV, HD, CAP, MAXPOS = 9, 3, 64, 64, 256
QKV = (NH + 2 * NKV) * HD
CALLS = [16, 8] + [1] * 8          # tokens per call: two prefill chunks, then decode steps


@dataclass(frozen=True)
class Case:
    name: str
    cache: int                      # TensorProto element type of past/present
    bits: int = 0                   # kv_cache_bit_width (0 = attribute absent)
    k_quant: str = ""               # k_quant_type ("" = attribute absent)
    v_quant: str = ""
    packed_dim: int = HD            # head_dim of the cache buffer (HD / 2 for packed int4)
    qk_output: bool = False
    window: int = -1
    separate_qkv: bool = False


def scale_shape(kind: str) -> tuple[int, ...]:
    return (1,) if kind == "PER_TENSOR" else (1, NKV, 1, HD)


def graph(case: Case, k_scale: np.ndarray | None, v_scale: np.ndarray | None) -> bytes:
    rng = np.random.default_rng(1)
    ang = np.arange(MAXPOS)[:, None] * (10000.0 ** (-np.arange(HD // 2) / (HD // 2)))[None]
    inits = [numpy_helper.from_array(np.cos(ang).astype(np.float32), "cos"),
             numpy_helper.from_array(np.sin(ang).astype(np.float32), "sin")]
    del rng
    inputs = [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total", TensorProto.INT32, []),
              helper.make_tensor_value_info("pos", TensorProto.INT64, [1, "s"])]
    if case.separate_qkv:
        qkv = ["q", "k", "v"]
        for n, width in zip(qkv, (NH * HD, NKV * HD, NKV * HD)):
            inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "s", width]))
    else:
        qkv = ["qkv", "", ""]
        inputs.append(helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [1, "s", QKV]))
    shape = [1, NKV, CAP, case.packed_dim]
    inputs += [helper.make_tensor_value_info("past_k", case.cache, shape),
               helper.make_tensor_value_info("past_v", case.cache, shape)]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "s", NH * HD]),
               helper.make_tensor_value_info("present_k", case.cache, shape),
               helper.make_tensor_value_info("present_v", case.cache, shape)]
    ins = qkv + ["past_k", "past_v", "seqlens_k", "total", "cos", "sin", "pos", "", ""]
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if s is not None:
            inits.append(numpy_helper.from_array(s.astype(np.float32), name))
            ins.append(name)
        else:
            ins.append("")
    while ins and ins[-1] == "":
        ins.pop()
    attrs = dict(num_heads=NH, kv_num_heads=NKV, do_rotary=1, local_window_size=case.window)
    if case.bits:
        attrs["kv_cache_bit_width"] = case.bits
    if case.k_quant:
        attrs["k_quant_type"] = case.k_quant
    if case.v_quant:
        attrs["v_quant_type"] = case.v_quant
    outs = ["out", "present_k", "present_v"]
    if case.qk_output:
        attrs["qk_output"] = 2
        outs.append("qk")
        outputs.append(helper.make_tensor_value_info("qk", TensorProto.FLOAT, [1, NH, "s", "t"]))
    node = helper.make_node("GroupQueryAttention", ins, outs, domain="com.microsoft", **attrs)
    model = helper.make_model(helper.make_graph([node], "gqa", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def np_type(elem: int):
    return {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.INT8: np.int8,
            TensorProto.UINT8: np.uint8, TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn}[elem]


def inputs_of_calls(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, n, QKV)).astype(np.float32) for n in CALLS]


def run(case: Case, k_scale=None, v_scale=None) -> tuple[list, list, np.ndarray, np.ndarray]:
    """Run every call; return outputs, attention probabilities (or []), and the final buffers."""
    s = ort.InferenceSession(graph(case, k_scale, v_scale), providers=["CPUExecutionProvider"])
    t = np_type(case.cache)
    pk = np.zeros((1, NKV, CAP, case.packed_dim), t)
    pv = np.zeros_like(pk)
    ko, vo = ort.OrtValue.ortvalue_from_numpy(pk), ort.OrtValue.ortvalue_from_numpy(pv)
    outs, qks, length = [], [], 0
    for x in inputs_of_calls():
        n = x.shape[1]
        b = s.io_binding()
        if case.separate_qkv:
            q, k, v = np.split(x, [NH * HD, (NH + NKV) * HD], axis=-1)
            for name, a in (("q", q), ("k", k), ("v", v)):
                b.bind_cpu_input(name, np.ascontiguousarray(a))
        else:
            b.bind_cpu_input("qkv", x)
        b.bind_cpu_input("seqlens_k", np.array([length + n - 1], np.int32))
        b.bind_cpu_input("total", np.array(length + n, np.int32))
        b.bind_cpu_input("pos", np.arange(length, length + n, dtype=np.int64)[None])
        b.bind_output("out")
        if case.qk_output:
            b.bind_output("qk")
        b.bind_ortvalue_input("past_k", ko)
        b.bind_ortvalue_input("past_v", vo)
        b.bind_ortvalue_output("present_k", ko)
        b.bind_ortvalue_output("present_v", vo)
        s.run_with_iobinding(b)
        res = b.copy_outputs_to_cpu()
        outs.append(res[0])
        if case.qk_output:
            qks.append(res[1])
        length += n
    return outs, qks, pk, pv


def absmax_scale(buf: np.ndarray, kind: str, qmax: float) -> np.ndarray:
    axes = None if kind == "PER_TENSOR" else (0, 2)
    m = np.abs(buf).max(axis=axes, keepdims=axes is not None)
    return (np.maximum(m, 1e-8) / qmax).reshape(scale_shape(kind))


CASES = [
    Case("fp32 (reference)", TensorProto.FLOAT),
    Case("fp16 cache, fp32 activations", TensorProto.FLOAT16),
    Case("int8 K per-channel, V per-tensor", TensorProto.INT8, 8, "PER_CHANNEL", "PER_TENSOR"),
    Case("int8 K per-channel, V per-channel", TensorProto.INT8, 8, "PER_CHANNEL", "PER_CHANNEL"),
    Case("int8 K per-tensor, V per-tensor", TensorProto.INT8, 8, "PER_TENSOR", "PER_TENSOR"),
    Case("int8 per-channel + qk_output", TensorProto.INT8, 8, "PER_CHANNEL", "PER_CHANNEL", qk_output=True),
    Case("int8 per-channel + local window 8", TensorProto.INT8, 8, "PER_CHANNEL", "PER_CHANNEL", window=8),
    Case("int8 per-channel, separate Q K V", TensorProto.INT8, 8, "PER_CHANNEL", "PER_CHANNEL", separate_qkv=True),
    Case("uint8 per-channel (bit width 8)", TensorProto.UINT8, 8, "PER_CHANNEL", "PER_CHANNEL"),
    Case("int4 packed in uint8 (hd/2), per-channel", TensorProto.UINT8, 4, "PER_CHANNEL", "PER_CHANNEL", HD // 2),
    Case("int4 packed in uint8 (hd/2), per-tensor", TensorProto.UINT8, 4, "PER_TENSOR", "PER_TENSOR", HD // 2),
    Case("int4 in uint8, unpacked (hd)", TensorProto.UINT8, 4, "PER_CHANNEL", "PER_CHANNEL"),
    Case("int4 packed in int8 (hd/2)", TensorProto.INT8, 4, "PER_CHANNEL", "PER_CHANNEL", HD // 2),
    Case("int4 packed + qk_output + local window 8", TensorProto.UINT8, 4, "PER_CHANNEL", "PER_CHANNEL", HD // 2,
         qk_output=True, window=8),
    Case("int8 per-channel, scales at 1/2 the range (clipping)", TensorProto.INT8, 8, "PER_CHANNEL", "PER_CHANNEL"),
    Case("float8e4m3fn per-tensor", TensorProto.FLOAT8E4M3FN, 8, "PER_TENSOR", "PER_TENSOR"),
]


def qmax_of(case: Case) -> float:
    if case.cache == TensorProto.FLOAT8E4M3FN:
        return 448.0
    return 7.0 if case.bits == 4 else 127.0


def main() -> None:
    ort.set_default_logger_severity(4)
    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider; one GroupQueryAttention ({NH} query heads, {NKV} KV "
          f"heads, head_dim {HD}), calls of {CALLS[0]}, {CALLS[1]} and {len(CALLS) - 2}x1 tokens, shared buffer\n")
    ref_out, _, ref_k, ref_v = run(CASES[0])
    ref_qk = {w: run(Case("ref", TensorProto.FLOAT, qk_output=True, window=w))[1] for w in (-1, 8)}
    ref_win = run(Case("ref", TensorProto.FLOAT, window=8))[0]
    used = sum(CALLS)
    print("| cache | runs | max abs diff, output (prefill / decode) | max abs diff, attention probs | "
          "cache dequantised vs fp32 (max abs) | message |\n|---|---|---|---|---|---|")
    for case in CASES[1:]:
        ks = vs = None
        if case.k_quant:
            shrink = 0.5 if "clipping" in case.name else 1.0
            ks = absmax_scale(ref_k[:, :, :used], case.k_quant, qmax_of(case)) * shrink
            vs = absmax_scale(ref_v[:, :, :used], case.v_quant, qmax_of(case)) * shrink
        try:
            outs, qks, pk, pv = run(case, ks, vs)
        except Exception as e:  # noqa: BLE001 - the table records ONNX Runtime's refusal
            msg = str(e).replace("\n", " ").replace("|", "/")
            msg = msg.split("Status Message:")[-1].strip()
            msg = msg[msg.find("]") + 1:].strip()[:200] if msg.startswith("[") else msg[:200]
            print(f"| {case.name} | no | | | | {msg} |")
            continue
        ref = ref_win if case.window > 0 else ref_out
        pre = max(float(np.abs(a - b).max()) for a, b in zip(outs[:2], ref[:2]))
        dec = max(float(np.abs(a - b).max()) for a, b in zip(outs[2:], ref[2:]))
        qk = (f"{max(float(np.abs(a - b).max()) for a, b in zip(qks, ref_qk[case.window])):.4f}" if qks else "")
        deq = dequantised_error(case, pk, pv, ks, vs, ref_k, ref_v, used)
        print(f"| {case.name} | yes | {pre:.4f} / {dec:.4f} | {qk} | {deq} | |")


def dequantised_error(case: Case, pk, pv, ks, vs, ref_k, ref_v, used: int) -> str:
    """The cache's own values against the fp32 cache, read as symmetric q * scale (int8 / fp8) or
    as two 4-bit values a byte, low nibble first, offset 8 (int4); '?' when no reading fits."""
    if case.cache == TensorProto.FLOAT16:
        return f"{max(np.abs(pk[:, :, :used] - ref_k[:, :, :used]).max(), np.abs(pv[:, :, :used] - ref_v[:, :, :used]).max()):.4f}"
    if case.packed_dim != HD:
        def unpack(b):
            u = b.view(np.uint8)
            lo, hi = (u & 0xF).astype(np.int16), (u >> 4).astype(np.int16)
            return np.stack([lo, hi], -1).reshape(b.shape[:-1] + (HD,)) - 8
        dk, dv = unpack(pk) * ks, unpack(pv) * vs
    elif case.cache == TensorProto.UINT8 and case.bits == 8:
        dk, dv = (pk.astype(np.float32) - 128) * ks, (pv.astype(np.float32) - 128) * vs
    else:
        dk, dv = pk.astype(np.float32) * ks, pv.astype(np.float32) * vs
    if "clipping" in case.name:     # saturating: the cache holds the reference clipped to [-128, 127] * scale
        q = qmax_of(case)
        ref_k, ref_v = np.clip(ref_k, -(q + 1) * ks, q * ks), np.clip(ref_v, -(q + 1) * vs, q * vs)
    err = max(np.abs(dk[:, :, :used] - ref_k[:, :, :used]).max(), np.abs(dv[:, :, :used] - ref_v[:, :, :used]).max())
    bound = max(ks.max(), vs.max())
    return f"{err:.4f} (scale {bound:.4f})" + ("" if err <= bound / 2 + 1e-6 else " ?")


if __name__ == "__main__":
    main()
