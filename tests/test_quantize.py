"""Block quantisation: RTN error bounds, GGUF blocks carried exactly, and every MatMulNBits form ONNX
Runtime runs equals the dequantised matmul."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from slm.export.graph import IR_VERSION, MS, OPSET, Graph, linear
from slm.export.quantize import NBitsWeight, from_gguf, quantize_fit, quantize_rtn


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

    from slm.core.sources import default_gguf
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


_FP16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q8_0": [0], "Q4_K": [0, 2], "Q6_K": [208]}


def _random_gguf_blocks(type_name: str, rows: int, k: int, seed: int) -> np.ndarray:
    """Raw GGUF rows of `type_name`: random codes and sub-block scales, sane fp16 super-block scales
    (gguf-py cannot quantise K-quants, so the blocks are made byte by byte; every byte pattern is valid).
    A few blocks get a zero scale, as a block of equal weights does."""
    from slm.export.quantize import GGUF_BLOCKS

    block_bytes, per_block = GGUF_BLOCKS[type_name][:2]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, k // per_block, block_bytes), dtype=np.uint8)
    for at in _FP16_FIELDS[type_name]:
        d = rng.uniform(1e-3, 5e-2, raw.shape[:2]).astype(np.float16)
        d[0, 0] = 0                                  # a flat block
        raw[..., at:at + 2] = d.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"])
def test_stored_gguf_factors_give_the_blocks_exactly(type_name):
    """A carried tensor keeps the GGUF's own factors: Q4_0/Q4_1/Q5_0/Q8_0 one fp16 scale (and offset)
    per block, Q4_K/Q6_K one fp16 per super-block times their integer sub-block scales (and mins).
    They give the carry's float32 scales bit for bit, and the package built from them computes the
    dequantised matmul (max |dequant - GGUF| is 0 up to float32 rounding) with fewer bytes than float32
    scales."""
    import gguf
    from gguf.quants import dequantize

    raw = _random_gguf_blocks(type_name, 24, 512, seed=3)
    deq = dequantize(raw, gguf.GGMLQuantizationType[type_name]).reshape(24, 512).astype(np.float32)
    w = from_gguf(raw, type_name, deq)
    assert np.abs(w.dequantize() - deq).max() <= 1e-6 * np.abs(deq).max()
    assert w.stored is not None
    assert (w.stored.scale_codes is not None) == type_name.endswith("_K")
    folded = w.stored.scales32()
    flat = folded == 0                  # the carry stores 1.0 there (its codes are neutral); both read 0 or the offset
    assert flat.any() and np.array_equal(folded[~flat], w.scales[~flat]) and np.all(w.scales[flat] == 1)
    y, ref, _ = _run_linear(w)
    plain, _, _ = _run_linear(NBitsWeight(w.q, w.scales, w.zero_points, w.bits, w.block_size, w.source))
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.abs(y - plain).max() <= 1e-5 * np.abs(ref).max()
    stored_bytes, plain_bytes = _init_bytes(w), _init_bytes(NBitsWeight(w.q, w.scales, w.zero_points, w.bits, w.block_size))
    codes = w.q.size * w.bits / 8
    # the scales (and Q4_1's side path of block offsets, 8 s + offset folded at load) shrink to the file's fp16
    assert stored_bytes - codes <= 0.55 * (plain_bytes - codes)


def _init_bytes(w: NBitsWeight) -> int:
    g = Graph(TensorProto.FLOAT)
    linear(g, g.input("x", TensorProto.FLOAT, [1, 2, w.shape[1]]), w, "lin", None, 0)
    return sum(len(t.raw_data) for t in g.inits)


def test_stored_factors_survive_fusing_reordering_and_row_scaling():
    """QKV / gate-up fusion, llama.cpp's Q/K row order and the down projection's outlier scaling of
    up's rows all keep the stored factors, and the graph still computes the dequantised matmul."""
    import gguf
    from gguf.quants import dequantize

    from slm.export.graph import Outliers, scale_rows
    from slm.export.quantize import concat_rows

    parts = []
    for seed in (4, 5):
        raw = _random_gguf_blocks("Q4_1", 16, 256, seed)
        parts.append(from_gguf(raw, "Q4_1", dequantize(raw, gguf.GGMLQuantizationType.Q4_1).reshape(16, 256).astype(np.float32)))
    w = concat_rows(parts).take_rows(np.random.default_rng(6).permutation(32))
    w = scale_rows(w, Outliers(np.array([3, 17]), np.array([0.01, 0.5], np.float32)))
    assert w.stored is not None and w.stored.row_scale is not None
    y, ref, _ = _run_linear(w)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def _folded_linear(w: NBitsWeight, k: int, tmp_path, largest_float32: int = 64):
    """One linear over w as the export builds it, and the graph ONNX Runtime runs after folding its
    constants (prepacking off, so MatMulNBits' inputs stay readable): (folded model, its constants).
    The package stores no float32 table of scales or offsets: no float32 initializer of `largest_float32`
    bytes or more (the outlier columns' exact fp32 weights are allowed by a larger bound)."""
    import onnx
    from onnx import numpy_helper

    g = Graph(TensorProto.FLOAT)
    g.output(linear(g, g.input("x", TensorProto.FLOAT, [1, 2, k]), w, "lin", None, 4), "y", TensorProto.FLOAT, None)
    assert all(t.data_type != TensorProto.FLOAT or len(t.raw_data) < largest_float32 for t in g.inits)
    model = helper.make_model(helper.make_graph(g.nodes, "t", g.inputs, g.outputs, g.inits), ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    options.add_session_config_entry("session.disable_prepacking", "1")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    return folded, {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}


def test_folded_side_path_is_the_float32_offsets_bit_for_bit(tmp_path):
    """Q4_1's side path stores the GGUF's fp16 scale and offset and ONNX Runtime folds
    Transpose((8 s + offset) * row) at load: the constant the running graph multiplies by is, bit for
    bit, the float32 (8 s + offset) * row an export once stored (the same roundings, in the same order)."""
    import gguf
    from gguf.quants import dequantize

    from slm.export.graph import Outliers, scale_rows

    raw = _random_gguf_blocks("Q4_1", 16, 256, 7)
    w = from_gguf(raw, "Q4_1", dequantize(raw, gguf.GGMLQuantizationType.Q4_1).reshape(16, 256).astype(np.float32))
    w = scale_rows(w, Outliers(np.array([2, 9]), np.array([0.03, 0.7], np.float32)))
    folded, consts = _folded_linear(w, 256, tmp_path, largest_float32=256)
    side, = [consts[n.input[1]] for n in folded.graph.node if n.op_type == "MatMul" and n.input[1] in consts]
    st = w.stored
    expected = ((8.0 * st.scale.astype(np.float32) + st.offset.astype(np.float32)) * st.row_scale[:, None]).T
    assert side.dtype == np.float32 and np.array_equal(side, expected)


@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K"])
def test_k_quant_factors_fold_at_load_into_the_float32_scales_bit_for_bit(tmp_path, type_name):
    """A K-quant's d x sub-block codes (and Q4_K's -dmin x mins) are Casts and a Mul over stored
    constants: ONNX Runtime folds them at load (none is left in the running graph), and MatMulNBits
    reads, bit for bit, the float32 scales (Q4_K: and side-path offsets 8 s + offset) of the carry."""
    import gguf
    from gguf.quants import dequantize

    raw = _random_gguf_blocks(type_name, 16, 512, 8)
    w = from_gguf(raw, type_name, dequantize(raw, gguf.GGMLQuantizationType[type_name]).reshape(16, 512).astype(np.float32))
    folded, consts = _folded_linear(w, 512, tmp_path)
    # nothing of the factors is left to run: Casts, Mul, the Q4_K bit unpacking all folded
    assert {n.op_type for n in folded.graph.node} <= {"MatMulNBits", "Reshape", "ReduceSum", "MatMul", "Add", "Identity"}
    mnb, = [n for n in folded.graph.node if n.op_type == "MatMulNBits"]
    st = w.stored
    assert np.array_equal(consts[mnb.input[2]].reshape(st.scales32().shape), st.scales32())
    if type_name == "Q4_K":
        side, = [consts[n.input[1]] for n in folded.graph.node if n.op_type == "MatMul" and n.input[1] in consts]
        assert np.array_equal(side, (8.0 * st.scales32() + st.offsets32()).T)


def test_q4_k_sub_block_scales_are_stored_as_the_gguf_bytes():
    """The package stores a Q4_K tensor's 6-bit scales and mins as the file's own 12 bytes per
    super-block (4.5 bits a weight with the codes and fp16 d, dmin, as in the GGUF)."""
    import gguf
    from gguf.quants import dequantize

    from slm.export.graph import pack_k4_scales

    raw = _random_gguf_blocks("Q4_K", 8, 512, 9)
    w = from_gguf(raw, "Q4_K", dequantize(raw, gguf.GGMLQuantizationType.Q4_K).reshape(8, 512).astype(np.float32))
    packed = pack_k4_scales(w.stored.scale_codes, w.stored.offset_codes)
    assert np.array_equal(packed, raw.reshape(8, 2, 144)[..., 4:16])
    g = Graph(TensorProto.FLOAT)
    linear(g, g.input("x", TensorProto.FLOAT, [1, 2, 512]), w, "lin", None, 4)
    stored = sum(len(t.raw_data) for t in g.inits if t.dims and np.prod(t.dims) >= 16)
    assert stored == raw.size       # codes 128 + d, dmin 4 + scales 12 bytes per 256 weights: the file's bytes


@pytest.mark.parametrize("layout", ["float32", "gguf"])
def test_k_quant_scales_layout_is_the_exporters_choice(tmp_path, layout):
    """carry_gguf on a real GGUF file (written by gguf-py with raw Q4_K and Q6_K blocks): float32 keeps
    the K-quants' scales as float32 (stored None), gguf keeps the file's factors; both carry the
    tensors exactly (max |dequant - GGUF reference| within float32 rounding)."""
    import gguf
    from gguf.quants import dequantize

    from slm.export.gguf_carry import carry_gguf

    path = tmp_path / "k.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    reference = {}
    for i, (typ, name) in enumerate([("Q4_K", "ffn_up"), ("Q6_K", "ffn_down")]):
        raw = _random_gguf_blocks(typ, 16, 512, 20 + i)
        qtype = gguf.GGMLQuantizationType[typ]
        writer.add_tensor(f"blk.0.{name}.weight", raw, raw_shape=raw.shape, raw_dtype=qtype)
        hf = f"model.layers.0.mlp.{'up' if name == 'ffn_up' else 'down'}_proj.weight"
        reference[hf] = dequantize(raw, qtype).reshape(16, 512).astype(np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    carried, report = carry_gguf(str(path), reference, head_dim=64, k_quant_scales=layout)
    assert report["types"] == {"Q4_K": 1, "Q6_K": 1}
    for name, w in carried.items():
        assert np.abs(w.dequantize() - reference[name]).max() <= 1e-6 * np.abs(reference[name]).max()
        assert (w.stored is None) == (layout == "float32")
        y, ref, _ = _run_linear(w)
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def _min_max_integer_zero_point(w: np.ndarray, block: int) -> np.ndarray:
    """The plain grid quantize_fit starts from: min-max scale, integer zero point, round to nearest."""
    b = w.reshape(w.shape[0], -1, block)
    lo, hi = np.minimum(b.min(-1), 0), np.maximum(b.max(-1), 0)
    s = (hi - lo) / 15
    z = np.clip(np.rint(-lo / s), 0, 15)
    q = np.clip(np.rint(b / s[..., None]) + z[..., None], 0, 15)
    return ((q - z[..., None]) * s[..., None]).reshape(w.shape)


def test_fit_has_integer_zero_points_and_beats_the_min_max_grid():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    w[:, 7] *= 10                                       # an outlier column, as real weights have
    fit = quantize_fit(w, 4, 64)
    assert fit.zero_points.dtype == np.uint8 and fit.zero_points.max() <= 15 and fit.q.max() <= 15
    assert fit.scales.shape == (64, 4) and fit.block_size == 64
    fit_err = ((fit.dequantize() - w) ** 2).sum()
    assert fit_err < 0.95 * ((_min_max_integer_zero_point(w, 64) - w) ** 2).sum()
    # the same numbers through MatMulNBits (uint8 zero points, block 64): its fast layout is what it is for
    y, ref, nodes = _run_linear(fit)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max() and nodes == 2


def test_fit_weighs_the_channels_it_is_told_matter():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((32, 128)).astype(np.float32)
    imp = np.ones(128, np.float32)
    imp[::8] = 100.0                                    # one channel in eight carries large activations
    plain, weighted = quantize_fit(w, 4, 64), quantize_fit(w, 4, 64, imp)
    cost = lambda q: float((imp * (q.dequantize() - w) ** 2).sum())
    assert cost(weighted) < 0.8 * cost(plain)
    assert np.abs(weighted.dequantize() - w)[:, ::8].mean() < np.abs(plain.dequantize() - w)[:, ::8].mean()


def test_compact_export_is_4_bit_blocks_of_64_with_integer_zero_points(tmp_path, smollm2_tokenizer):
    """quant "compact": every MatMulNBits at 4 bits, block 64, uint8 zero points, no fp32 side path;
    its logits are the fitted weights' (against the fp32 package of the same model: a bounded change)."""
    import onnx

    from slm.export import build_package
    from slm.runtime import Engine
    from tests.conftest import tiny_llama

    model = tiny_llama()
    fp32, compact = tmp_path / "fp32", tmp_path / "compact"
    build_package(None, fp32, quant="fp32", model=model, tokenizer=smollm2_tokenizer, attention_stats=False, kv_dtypes=())
    man = build_package(None, compact, quant="compact", model=model, tokenizer=smollm2_tokenizer,
                        attention_stats=False, kv_dtypes=(), accuracy_level=0)
    assert (man.quant.mode, man.quant.bits, man.quant.block_size) == ("compact", 4, 64)
    assert "weighted by calibration" in man.quant.notes
    graph = onnx.load(str(compact / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in nbits}
    assert all(a["block_size"] == 64 for a in attrs.values())
    layers = {k: a for k, a in attrs.items() if k.startswith("model.layers.")}
    assert layers and all(a["bits"] == 4 for a in layers.values())
    assert attrs["embed"]["bits"] == 8                 # the tied table, read by GatherBlockQuantized too
    assert all(len(n.input) >= 4 and n.input[3] for n in nbits)            # uint8 zero points bound
    assert not [t for t in graph.initializer if "block_offsets" in t.name]     # no side path
    # the graph computes exactly the fitted weights (accuracy_level 0): PyTorch with them swapped in
    import copy

    import torch

    from slm.export import quantize_weights
    from slm.export.architectures import float_weights, spec_of
    from slm.export.calibrate import input_importance
    from tests.test_export_parity import graph_logits
    fitted, _ = quantize_weights(float_weights(model, spec_of(model.config, 512)), "compact",
                                 importance=input_importance(model, smollm2_tokenizer))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        params = dict(ref.named_parameters())
        for name, w in fitted.items():
            if hasattr(w, "dequantize"):
                params[name].copy_(torch.from_numpy(w.dequantize()))
    ids = np.array([smollm2_tokenizer("The library opened on the corner of Elm Street").input_ids])
    got = graph_logits(compact, ids)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    assert np.abs(got - graph_logits(fp32, ids)).max() > 1e-3 * np.abs(want).max()   # and it did re-quantise


def test_fp32_twin_is_the_package_at_accuracy_0(tmp_path, smollm2_tokenizer):
    """bench/fp32_twin.py (the reference of quality benchmarks for carried packages): every MatMulNBits
    at accuracy_level 0; its logits equal those of the package exported that way."""
    from bench.fp32_twin import twin
    from slm.export import build_package
    from tests.conftest import tiny_llama
    from tests.test_export_parity import graph_logits

    model = tiny_llama()
    fast, slow = tmp_path / "acc4", tmp_path / "acc0"
    for out, level in ((fast, 4), (slow, 0)):
        build_package(None, out, quant="int4", model=model, tokenizer=smollm2_tokenizer, attention_stats=False,
                      kv_dtypes=(), accuracy_level=level, outliers=0)
    made = twin(fast, tmp_path / "twin")
    ids = np.array([smollm2_tokenizer("The new library opened on the corner").input_ids])
    assert np.array_equal(graph_logits(made, ids), graph_logits(slow, ids))
    assert not np.array_equal(graph_logits(fast, ids), graph_logits(slow, ids))   # int8 activations do differ
