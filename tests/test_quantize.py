"""Block quantisation: RTN error bounds, GGUF blocks carried exactly, and every MatMulNBits form ONNX
Runtime runs equals the dequantised matmul."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.graph import IR_VERSION, MS, OPSET, Graph, linear
from export.quantize import NBitsWeight, from_gguf, quantize_rtn


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_error_is_at_most_half_a_step(bits):
    w = np.random.default_rng(0).standard_normal((16, 128)).astype(np.float32)
    q = quantize_rtn(w, bits, 32)
    err = np.abs(q.dequantize() - w).reshape(16, 4, 32).max(-1)
    assert (err <= q.scales / 2 + 1e-6).all()
    assert q.q.max() < 2 ** bits


def test_gguf_q4_1_and_q8_0_blocks_carry_exactly():
    import gguf
    from gguf.quants import dequantize

    from slm.sources import default_gguf
    reader = gguf.GGUFReader(str(default_gguf()))
    seen = set()
    for t in reader.tensors:
        if t.tensor_type.name in ("Q4_1", "Q8_0") and t.tensor_type.name not in seen:
            seen.add(t.tensor_type.name)
            deq = dequantize(t.data, t.tensor_type).astype(np.float32)
            deq = deq.reshape(len(t.data), -1)
            w = from_gguf(np.asarray(t.data), t.tensor_type.name, deq)
            assert np.abs(w.dequantize() - deq).max() <= 1e-6 * np.abs(deq).max()
            assert w.bits == (4 if t.tensor_type.name == "Q4_1" else 8)
    assert seen == {"Q4_1", "Q8_0"}


def _run_linear(w: NBitsWeight, accuracy_level: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    g = Graph(TensorProto.FLOAT)
    x = g.input("x", TensorProto.FLOAT, [1, 2, w.shape[1]])
    g.output(linear(g, x, w, "lin", None, accuracy_level), "y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(g.nodes, "t", g.inputs, g.outputs, g.inits), ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    X = np.random.default_rng(1).standard_normal((1, 2, w.shape[1])).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    return y, X @ w.dequantize().T, len(g.nodes)


@pytest.mark.parametrize("form", ["uint8 zero points", "float zero points (side path)", "symmetric (Q4_0)", "8-bit"])
def test_every_matmulnbits_form_equals_the_dequantised_matmul(form):
    rng = np.random.default_rng(2)
    q = rng.integers(0, 16, (24, 64)).astype(np.uint8)
    s = (rng.random((24, 2)) + 0.1).astype(np.float32)
    zp = {"uint8 zero points": rng.integers(0, 16, (24, 2)).astype(np.uint8),
          "float zero points (side path)": (rng.random((24, 2)) * 15).astype(np.float32),
          "symmetric (Q4_0)": np.full((24, 2), 8.0, np.float32)}.get(form)
    w = quantize_rtn(rng.standard_normal((24, 64)).astype(np.float32), 8, 32) if form == "8-bit" \
        else NBitsWeight(q, s, zp, 4, 32)
    y, ref, nodes = _run_linear(w)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    if form == "symmetric (Q4_0)":
        assert nodes == 2            # MatMulNBits and the output: no side path, no zero points
