"""The decoder as an ONNX graph, built op by op and read top to bottom:

    input_ids ─► embed ─► [block] x L ─► final norm ─► lm_head ─► logits (last n positions)

    block (pre-norm; Gemma 3 adds the two bracketed norms):

      x ─► RMSNorm ─► QKV MatMul ─► (Gemma: per-head RMSNorm on q, k) ─► GroupQueryAttention ─► o MatMul
      │                                rotary at explicit position_ids,         │
      │                                KV appended in the shared buffer         ▼
      │                                                                (Gemma: RMSNorm)
      └──────────────────────────────── + ◄──────────────────────────────────────┘   (SkipSimplifiedLayerNorm)
                                         │
                  RMSNorm ─► gate/up MatMul ─► act(gate) * up ─► down MatMul ─► (Gemma: RMSNorm) ─► + next block

Positions are graph inputs: a cache compacted by eviction keeps each key at its true rotary position
and new tokens continue the true position, whatever slot they land in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slm.export.quantize import BlockScales, NBitsWeight, concat_rows, quantize_rtn, quantize_symmetric
from slm.core.package import Dimensions, GraphIO

OPSET = 21
IR_VERSION = 10     # onnx 1.23 writes IR 14 by default, which ONNX Runtime <= 1.31 rejects
MS = "com.microsoft"


# a KV cache dtype -> (element type, head_dim per stored element, GroupQueryAttention attributes).
# bench/gqa_quant_kv.py checked which the CPU kernel runs: K and V must share one quant type (so
# per-channel for both), int4 is two values a byte in uint8, float8 has no CPU kernel.
CACHE_FORMATS = {
    "float32": (TensorProto.FLOAT, 1, {}),
    "float16": (TensorProto.FLOAT16, 1, {}),
    "int8": (TensorProto.INT8, 1, {"kv_cache_bit_width": 8, "k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL"}),
    "int4": (TensorProto.UINT8, 2, {"kv_cache_bit_width": 4, "k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL"}),
}


@dataclass(frozen=True)
class Spec:
    """What the graph needs to know about the architecture, read off a HF config: the manifest's
    `Dimensions` (what the runtime reads back) and what only the graph needs."""
    architecture: str           # "llama" | "gemma3"
    dims: Dimensions            # vocab, hidden, layers, heads, KV heads, head_dim, rotary positions
    rms_norm_eps: float
    activation: str             # "silu" | "gelu_tanh"
    attn_scale: float
    sliding_window: tuple[int, ...]   # per layer, 0 = global attention
    rope_of_layer: tuple[str, ...]    # per layer, a key of the rotary tables
    qk_norm: bool = False
    sandwich_norm: bool = False       # Gemma: norms after attention and after the MLP
    embed_scale: float = 1.0
    final_logit_softcap: float = 0.0
    tied_embeddings: bool = True

    vocab_size = property(lambda self: self.dims.vocab_size)
    hidden_size = property(lambda self: self.dims.hidden_size)
    num_layers = property(lambda self: self.dims.num_layers)
    num_heads = property(lambda self: self.dims.num_heads)
    num_kv_heads = property(lambda self: self.dims.num_kv_heads)
    head_dim = property(lambda self: self.dims.head_dim)


class Graph:
    """A list of nodes and initializers; `op` returns the output name(s)."""

    def __init__(self, float_type: int, saved: dict[str, onnx.TensorProto] | None = None):
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.float_type = float_type
        self.saved = saved or {}        # initializers already written (external data): referenced, not copied
        self._n = 0
        self._init_names: set[str] = set()
        self.made: dict[str, str] = {}     # outputs made once per graph and read by several nodes, by role

    def init(self, name: str, array: np.ndarray, keep_dtype: bool = False) -> str:
        """Add a constant; a name already added is shared, not copied (tied embedding and head).
        Floats become the graph's float type unless `keep_dtype` (a GGUF's float16 scale factors)."""
        if name in self._init_names:
            return name
        self._init_names.add(name)
        if name in self.saved:
            self.inits.append(self.saved[name])
            return name
        if array.dtype in (np.float32, np.float64, np.float16) and not keep_dtype:
            array = array.astype(np.float16 if self.float_type == TensorProto.FLOAT16 else np.float32)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", name: str = "", **attrs):
        self._n += 1
        node_name = name or f"{op_type}_{self._n}"
        outs = [f"{node_name}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def input(self, name: str, elem: int, shape: list):
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, src: str, name: str, elem: int, shape: list):
        self.nodes.append(helper.make_node("Identity", [src], [name], name=f"out/{name}"))
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))


def linear(g: Graph, x: str, w, name: str, bias: np.ndarray | None, accuracy_level: int,
           outliers: "Outliers | None" = None) -> str:
    """y = x @ W.T (+ b), W in torch layout (out, in): MatMulNBits when quantised, else MatMul.
    `outliers`: input channels scaled down in x whose remainder goes through fp32 (linear_with_outliers)."""
    if outliers is not None and isinstance(w, NBitsWeight):
        return linear_with_outliers(g, x, w, name, bias, accuracy_level, outliers)
    if outliers is not None:            # float weights: undo the norm's scaling in the columns themselves
        w = w.astype(np.float32).copy()
        w[:, outliers.channels] /= outliers.alpha
    if isinstance(w, NBitsWeight) and w.zero_points.dtype == np.float32 and w.bits == 4 and np.all(w.zero_points == 8):
        w = NBitsWeight(w.q, w.scales, np.zeros((0, 0), np.uint8), 4, w.block_size, w.source, w.stored)   # symmetric (Q4_0)
    elif isinstance(w, NBitsWeight) and w.zero_points.dtype == np.float32:
        return linear_float_zero_point(g, x, w, name, bias, accuracy_level)
    if isinstance(w, NBitsWeight):
        n, k = w.shape
        ins = [x, g.init(f"{name}.qweight", w.packed()), scales_input(g, name, w)]
        # no zero points: MatMulNBits' default (8 at 4 bits), its fastest kernel
        ins.append(zero_points_input(g, name, w) if w.zero_points.size else "")
        if bias is not None:
            ins += ["", g.init(f"{name}.bias", bias)]
        return g.op("MatMulNBits", ins, domain=MS, name=name, K=k, N=n, bits=w.bits,
                    block_size=w.block_size, accuracy_level=accuracy_level)
    y = g.op("MatMul", [x, g.init(f"{name}.weight", np.ascontiguousarray(w.T))], name=name)
    return y if bias is None else g.op("Add", [y, g.init(f"{name}.bias", bias)])


def _stored(w: NBitsWeight):
    """The GGUF factors the package stores for w's scales (and offsets, where it has float zero
    points), or None when w's float32 scales are stored as they are."""
    st = w.stored
    if st is None or (w.zero_points.dtype == np.float32 and st.offset is None):
        return None
    return st


def _folded(g: Graph, name: str, st: BlockScales, which: str, trailing_one: bool = False) -> str:
    """(N, blocks [, 1]) float from the stored factor `which` ("scale" or "offset") [* row]: Casts
    over constants, which ONNX Runtime folds once at load (it keeps every folded intermediate until it
    is done, so a chain of them costs a copy each). A row scale (scale_rows) is a second, small node.
    Made once per graph: the (N, blocks, 1) view a gather reads is a Reshape of the same output, so
    the factor is stored once (a tied table's head and embedding)."""
    n, s = (st.scale if st.scale_codes is None else st.scale_codes).shape
    key = f"{name}.{which}*row" if st.row_scale is not None else f"{name}.{which}"
    if key not in g.made:
        out = _factor(g, name, st, which)
        if st.row_scale is not None:
            out = g.op("Mul", [out, _row(g, f"{name}.scale", st.row_scale)])
        g.made[key] = out
    if not trailing_one:
        return g.made[key]
    return g.op("Reshape", [g.made[key], g.init(f"shape/{n}x{s}x1", np.array([n, s, 1], np.int64))])


def _factor(g: Graph, name: str, st: BlockScales, which: str) -> str:
    """The stored factor `which` of `name` as the graph's float type (N, blocks), made once per graph:
    Cast(fp16), or for a K-quant Cast(d) (N, supers, 1) * Cast(sub-block codes) (N, supers, subs),
    reshaped: exact in float32 (an fp16 times an integer below 2**7)."""
    key = f"{name}.{which}/f32"
    if key not in g.made:
        half = st.scale if which == "scale" else st.offset
        codes = st.scale_codes if which == "scale" else st.offset_codes
        if codes is None:
            out = g.op("Cast", [g.init(f"{name}.{which}_f16", half, keep_dtype=True)], to=g.float_type)
        else:
            n, supers = half.shape
            d = g.init(f"{name}.{which}_f16", half.reshape(n, supers, 1), keep_dtype=True)
            out = g.op("Mul", [g.op("Cast", [d], to=g.float_type),
                               g.op("Cast", [_sub_block_codes(g, name, st)[which]], to=g.float_type)])
            out = g.op("Reshape", [out, g.init(f"shape/{n}x{codes.shape[1]}", np.array([n, codes.shape[1]], np.int64))])
        g.made[key] = out
    return g.made[key]


def _sub_block_codes(g: Graph, name: str, st: BlockScales) -> dict[str, str]:
    """A K-quant's integer sub-block codes (N, supers, subs) by factor. Q6_K: its int8 scales as they
    are. Q4_K: the 6-bit scales and mins packed in 12 bytes per super-block exactly as the GGUF
    stores them (llama.cpp's get_scale_min_k4 layout), unpacked by bit operations that ONNX Runtime
    folds at load; for bytes j < 4, scale j = b[j] & 63 and min j = b[j + 4] & 63; for j >= 4,
    scale j = (b[j + 4] & 15) | (b[j - 4] >> 6) << 4 and min j = (b[j + 4] >> 4) | (b[j] >> 6) << 4."""
    key = f"{name}.sub_block_codes"
    if key in g.made:
        return g.made[key]
    n, supers = st.scale.shape
    if st.offset_codes is None or st.scale_codes.shape[1] != 8 * supers:
        codes = {"scale": g.init(f"{name}.scale_codes", st.scale_codes.reshape(n, supers, -1), keep_dtype=True)}
    else:
        packed = g.init(f"{name}.k4_scales", pack_k4_scales(st.scale_codes, st.offset_codes), keep_dtype=True)
        last = g.init("axes/-1", np.array([-1], np.int64))
        part = lambda lo, hi: g.op("Slice", [packed, g.init(f"k4/{lo}", np.array([lo], np.int64)),
                                             g.init(f"k4/{hi}", np.array([hi], np.int64)), last])
        a, b, c = part(0, 4), part(4, 8), part(8, 12)
        const = lambda v: g.init(f"k4/u8/{v}", np.array(v, np.uint8))
        band = lambda x, v: g.op("BitwiseAnd", [x, const(v)])
        shift = lambda x, v, d: g.op("BitShift", [x, const(v)], direction=d)
        high2 = lambda x: shift(shift(x, 6, "RIGHT"), 4, "LEFT")          # (x >> 6) << 4
        codes = {"scale": g.op("Concat", [band(a, 63), g.op("BitwiseOr", [band(c, 15), high2(a)])], axis=-1),
                 "offset": g.op("Concat", [band(b, 63), g.op("BitwiseOr", [shift(c, 4, "RIGHT"), high2(b)])], axis=-1)}
    g.made[key] = codes
    return codes


def pack_k4_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """(N, supers, 12) uint8: 6-bit scales and mins (N, 8 * supers) in the GGUF's Q4_K byte layout."""
    n = sc.shape[0]
    sc, mn = sc.reshape(n, -1, 8).astype(np.uint8), mn.reshape(n, -1, 8).astype(np.uint8)
    out = np.empty((*sc.shape[:2], 12), np.uint8)
    out[..., 0:4] = (sc[..., 0:4] & 63) | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = (mn[..., 0:4] & 63) | ((mn[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 15) | ((mn[..., 4:8] & 15) << 4)
    return out


def _row(g: Graph, name: str, row: np.ndarray) -> str:
    return g.init(f"{name}_row", row.reshape(-1, 1).astype(np.float32))


def block_scales(g: Graph, name: str, w: NBitsWeight, trailing_one: bool = False) -> str:
    """w's scales (N, K/bs [, 1]), from the stored GGUF factors (_folded)."""
    return _folded(g, name, w.stored, "scale", trailing_one)


def block_offsets(g: Graph, name: str, w: NBitsWeight, trailing_one: bool = False) -> str:
    """w's float offsets (N, K/bs [, 1]), w = scale * code + offset, from the stored GGUF factors."""
    return _folded(g, name, w.stored, "offset", trailing_one)


def scales_input(g: Graph, name: str, w: NBitsWeight) -> str:
    """MatMulNBits' scales input: float32 (N * K/bs) as is, or (N, K/bs) folded from the stored GGUF factors."""
    if _stored(w) is None:
        return g.init(f"{name}.scales", w.scales.reshape(-1))
    return block_scales(g, name, w)


def zero_points_input(g: Graph, name: str, w: NBitsWeight) -> str:
    """MatMulNBits' zero points. A stored GGUF 8-bit container's are one constant (Q8_0 128, Q5_0 16;
    a block of zero scale reads 0 whatever its zero point): stored as that one byte, or left out at
    128 (the kernel's default)."""
    zp = w.zero_points
    if _stored(w) is not None and zp.dtype == np.uint8 and w.bits == 8:
        if np.all(zp == zp.flat[0]):
            c = int(zp.flat[0])
            if c == 128:
                return ""
            return g.op("Expand", [g.init(f"zero_point/{c}", np.array([c], np.uint8)),
                                   g.init(f"shape/{zp.size}", np.array([zp.size], np.int64))])
    return g.init(f"{name}.zero_points", w.packed_zero_points())


@dataclass(frozen=True)
class Outliers:
    """Input channels that int8 activations would clip the precision of (slm.export.calibrate): the norm
    that makes the input scales them by `alpha` (down to ordinary magnitudes), and an exact fp32 path
    adds back the (1 - alpha) the int8 kernel did not see."""
    channels: np.ndarray        # int64 (c,)
    alpha: np.ndarray           # float32 (c,), each in (0, 1]


def fold_outliers(gamma: np.ndarray, outliers: Outliers | None) -> np.ndarray:
    """The norm weight that makes the scaled input: gamma * alpha at the outlier channels."""
    if outliers is None:
        return gamma
    gamma = gamma.astype(np.float32).copy()
    gamma[outliers.channels] *= outliers.alpha
    return gamma


def scale_rows(w, outliers: Outliers | None):
    """The weight whose output rows `outliers.channels` are scaled by alpha: how the down projection's
    input (act(gate) * up, linear in up) gets its outlier channels scaled, in up's own block scales
    (a float zero point, -offset/scale, is unchanged by it; uint8 ones too): no new op, exact."""
    if outliers is None:
        return w
    if isinstance(w, NBitsWeight):
        scales = w.scales.copy()
        scales[outliers.channels] *= outliers.alpha[:, None]
        stored = None if w.stored is None else w.stored.with_row_scale(outliers.channels, outliers.alpha)
        return NBitsWeight(w.q, scales, w.zero_points, w.bits, w.block_size, w.source, stored)
    w = w.astype(np.float32).copy()
    w[outliers.channels] *= outliers.alpha[:, None]
    return w


def outlier_columns(w: NBitsWeight, outliers: Outliers) -> np.ndarray:
    """(c, N): what the scaled-down channels still owe, (1/alpha - 1) * W[:, channels].T, from the blocks' exact values."""
    return np.ascontiguousarray((w.columns(outliers.channels) * (1.0 / outliers.alpha - 1.0)).T.astype(np.float32))


def linear_with_outliers(g: Graph, x: str, w: NBitsWeight, name: str, bias, accuracy_level: int,
                         outliers: Outliers) -> str:
    """LLM.int8()'s mixed-precision decomposition (Dettmers et al. 2022), channels fixed at export. The
    input x arrives with its outlier channels scaled by alpha (fold_outliers, in the norm: no op), so
    they no longer set their blocks' int8 scale; the rest of them goes through fp32:

        x ─► linear(W) (MatMulNBits, int8 activations) ─────────────────────────────────────► + ─► y
        └──► Gather(channels) (B, S, c) ─► MatMul((1/alpha - 1) * W[:, channels].T (c, N)) ───┘

    exact in real arithmetic. Blocks with float zero points fold the fp32 part into their side path.
    """
    if w.zero_points.dtype == np.float32 and not np.all(w.zero_points == 8):
        return linear_float_zero_point(g, x, w, name, bias, accuracy_level, outliers)
    main = linear(g, x, w, name, bias, accuracy_level)
    cols = g.op("Gather", [x, g.init(f"{name}.outlier_channels", outliers.channels.astype(np.int64))], axis=2)
    return g.op("Add", [main, g.op("MatMul", [cols, g.init(f"{name}.outlier_weight", outlier_columns(w, outliers))])])


def linear_float_zero_point(g: Graph, x: str, w: NBitsWeight, name: str, bias, accuracy_level: int,
                            outliers: Outliers | None = None) -> str:
    """4-bit blocks with float zero points (GGUF Q4_1, Q4_K) on ONNX Runtime's fast symmetric kernel.

    w = s * (q - zp) = s * (q - 8) + o,   o = s * (8 - zp), one offset per block, so

        x ─► MatMulNBits(q, s; zero point 8; + bias) ──────────────────────────────────────────► + ─► y
        └──► sum x over each block (B, S, K/bs) [, Concat the outlier channels] ─► MatMul(o.T [; outlier_columns]) ─┘

    exact in real arithmetic; ONNX Runtime's CPU kernel for float zero points is ~20x slower. With
    the GGUF's fp16 factors stored (Q4_1), o.T is Transpose(8 * Cast(s) + Cast(offset)), folded by ONNX
    Runtime at load: the package holds the block's two fp16 numbers as the GGUF does, and the running
    graph is the same MatMul over a float32 constant.
    """
    n, k = w.shape
    st = _stored(w)
    if st is None or st.offset is None:
        side = g.init(f"{name}.block_offsets", side_path_weight(w, outliers))     # (K/bs [+ c], N) float32
    else:       # o = 8 s + offset from the GGUF's own fp16 factors, folded at load: nothing new on disk
        side = g.op("Add", [g.op("Mul", [_factor(g, name, st, "scale"), g.init("eight", np.array(8.0, np.float32))]),
                            _factor(g, name, st, "offset")])                    # (N, K/bs): (8 s + offset)
        if st.row_scale is not None:                                            # then * row, as the values were
            side = g.op("Mul", [side, _row(g, f"{name}.scale", st.row_scale)])
        side = g.op("Transpose", [side], perm=[1, 0])                           # (K/bs, N)
        if outliers is not None:
            side = g.op("Concat", [side, g.init(f"{name}.outlier_weight", outlier_columns(w, outliers))], axis=0)
    ins = [x, g.init(f"{name}.qweight", w.packed()), scales_input(g, name, w)]
    if bias is not None:
        ins += ["", "", g.init(f"{name}.bias", bias)]
    main = g.op("MatMulNBits", ins, domain=MS, name=name, K=k, N=n, bits=4, block_size=w.block_size,
                accuracy_level=accuracy_level)
    blocks = g.op("Reshape", [x, g.init(f"block_shape/{k}/{w.block_size}", np.array([0, 0, k // w.block_size, w.block_size], np.int64))])
    feats = g.op("ReduceSum", [blocks, g.init("axes/-1", np.array([-1], np.int64))], keepdims=0)
    if outliers is not None:
        cols = g.op("Gather", [x, g.init(f"{name}.outlier_channels", outliers.channels.astype(np.int64))], axis=2)
        feats = g.op("Concat", [feats, cols], axis=-1)
    return g.op("Add", [main, g.op("MatMul", [feats, side])])


def side_path_weight(w: NBitsWeight, outliers: Outliers | None) -> np.ndarray:
    """(K/bs [+ c], N) float32: each block's offset o = s * (8 - zp) [, then the outlier columns]."""
    side = w.scales * (8.0 - w.zero_points)
    side = np.ascontiguousarray(side.astype(np.float32).T)
    return side if outliers is None else np.concatenate([side, outlier_columns(w, outliers)])


HEAD_APPROX = "lm_head.topk_approx"      # the weights entry: the head's 4-bit copy for head_topk
APPROX_BLOCK = 32                        # its block size (symmetric: MatMulNBits' fastest 4-bit kernel)


def approximate_head(exact: NBitsWeight, rows: int = 16384) -> NBitsWeight:
    """The 4-bit symmetric copy of an 8-bit head that head_topk scores with, `rows` at a time (a
    151,936-row head is 0.9 GB in float32 at once)."""
    n = exact.shape[0]
    return concat_rows([quantize_symmetric(exact.take_rows(slice(i, i + rows)).dequantize(), 4, APPROX_BLOCK)
                        for i in range(0, n, rows)])


def topk_rescored_head(g: Graph, h: str, exact: NBitsWeight, data: str, prefix: str, approx: NBitsWeight,
                       k: int, accuracy_level: int, H: int) -> str:
    """An 8-bit head (a tied table, or an untied lm_head such as a GGUF's Q6_K output) read through a
    4-bit copy, its top k logits recomputed from the 8-bit blocks:

        h ─► MatMulNBits(approx: 4-bit symmetric copy) ─► approx (B, S, V) ─► TopK k ─► ids
        ids ─► GatherBlockQuantized(`data`: the 8-bit codes (V, H)) ─► rows (B, S, k, H) ─► rows . h (fp32) ─► exact
        logits = approx with exact scattered over the top k

    A decode step reads the 4-bit copy's bytes (about half the 8-bit head's in MatMulNBits' packed
    layout) plus k rows; the argmax and the likely tokens carry the 8-bit head's logits with fp32
    activations, the tail the 4-bit ones. `prefix` names the 8-bit head's scales and zero points."""
    logits4 = linear(g, h, approx, "head4", None, accuracy_level)
    _, ids = g.op("TopK", [logits4, g.init("head_topk/k", np.array([k], np.int64))], n_out=2, axis=-1)
    rows = g.op("GatherBlockQuantized", [data, ids, *table_gather_inputs(g, exact, prefix)],
                domain=MS, gather_axis=0, quantize_axis=2, block_size=exact.block_size, bits=8)
    rows = g.op("Reshape", [rows, g.init("head_topk/rows", np.array([0, 0, k, H], np.int64))])
    h4 = g.op("Unsqueeze", [h, g.init("axes/2", np.array([2], np.int64))])                 # (B, S, 1, H)
    rescored = g.op("ReduceSum", [g.op("Mul", [rows, h4]), g.init("axes/-1", np.array([-1], np.int64))], keepdims=0)
    return g.op("ScatterElements", [logits4, ids, rescored], axis=-1)


def gather_4bit_rows(g: Graph, table: NBitsWeight, ids: str) -> str:
    """An untied 4-bit embedding with float zero points (GGUF Q4_K, Q4_1), dequantised exactly on gather:

        ids ─► Gather packed rows (B, S, H/2) uint8 ─► low, high nibbles ─► (B, S, H/bs, bs) float
        ids ─► Gather scales, offsets (B, S, H/bs, 1) ─────────────────────► codes * scale + offset ─► (B, S, H)

    4 bits and two fp32 numbers per block, as the GGUF's blocks hold them (GatherBlockQuantized would
    need integer zero points, i.e. re-quantising)."""
    v, h = table.shape
    nb = h // table.block_size
    packed = g.init("embed.qweight4", table.packed().reshape(v, h // 2))
    rows = g.op("Gather", [packed, ids])                                                    # (B, S, H/2)
    low = g.op("BitwiseAnd", [rows, g.init("embed.low_mask", np.array(15, np.uint8))])
    high = g.op("BitShift", [rows, g.init("embed.shift", np.array(4, np.uint8))], direction="RIGHT")
    pairs = g.op("Concat", [g.op("Unsqueeze", [low, g.init("axes/-1", np.array([-1], np.int64))]),
                            g.op("Unsqueeze", [high, "axes/-1"])], axis=-1)               # (B, S, H/2, 2)
    codes = g.op("Cast", [g.op("Reshape", [pairs, g.init("embed.block_shape", np.array([0, 0, nb, table.block_size], np.int64))])],
                 to=TensorProto.FLOAT)
    if _stored(table) is None:
        scales = g.init("embed.row_scales", table.scales[..., None])
        offsets = g.init("embed.row_offsets", (-table.zero_points.astype(np.float32) * table.scales)[..., None].astype(np.float32))
    else:
        scales = block_scales(g, "embed", table, trailing_one=True)
        offsets = block_offsets(g, "embed", table, trailing_one=True)
    scale = g.op("Gather", [scales, ids])                                                  # (B, S, H/bs, 1)
    offset = g.op("Gather", [offsets, ids])
    x = g.op("Add", [g.op("Mul", [codes, scale]), offset])
    return g.op("Reshape", [x, g.init("shape/hidden", np.array([0, 0, h], np.int64))])


def table_gather_inputs(g: Graph, table: NBitsWeight, prefix: str = "embed") -> tuple[str, str]:
    """GatherBlockQuantized's scales and zero points (V, H/bs, 1) for an 8-bit table (`prefix`: "embed",
    or "lm_head" for an untied re-scored head), made once per graph (the embedding and a re-scored tied
    head read them): float32 as is, or the folded scales and the one constant zero point of a GGUF carry
    (zero_points_input)."""
    if _stored(table) is None:
        return (g.init(f"{prefix}.scales3d", table.scales[..., None]),
                g.init(f"{prefix}.zero_points3d", table.zero_points[..., None]))
    if f"{prefix}.scales3d" in g.made:
        return g.made[f"{prefix}.scales3d"], g.made[f"{prefix}.zero_points3d"]
    scales3d = block_scales(g, prefix, table, trailing_one=True)
    size = table.zero_points.size
    zp = zero_points_input(g, prefix, table) or g.op("Expand", [g.init("zero_point/128", np.array([128], np.uint8)),
                                                                g.init(f"shape/{size}", np.array([size], np.int64))])
    v, nb = table.scales.shape
    zp3d = g.op("Reshape", [zp, g.init(f"shape/{v}x{nb}x1", np.array([v, nb, 1], np.int64))])
    g.made[f"{prefix}.scales3d"], g.made[f"{prefix}.zero_points3d"] = scales3d, zp3d
    return scales3d, zp3d


def requantize_8bit(w: NBitsWeight, why: str) -> NBitsWeight:
    """Round-to-nearest 8 bits from the dequantised blocks, said on the console with its measured cost."""
    import sys

    new = quantize_rtn(w.dequantize(), 8, w.block_size)
    err = float(np.abs(new.dequantize() - w.dequantize()).max())
    print(f"[export] re-quantised {w.source} {w.shape} to 8 bits (RTN, block {w.block_size}) for {why}: "
          f"max |w - carried| = {err:.3g} ({err / float(np.abs(w.dequantize()).max()):.2%} of the largest weight)",
          file=sys.stderr, flush=True)
    return new


def fuse(weights: list, biases: list):
    """One projection for several (QKV, gate/up) when their storage agrees, else None."""
    if all(isinstance(w, NBitsWeight) for w in weights):
        try:
            w = concat_rows(weights)
        except ValueError:
            return None
    elif all(isinstance(w, np.ndarray) for w in weights):
        w = np.concatenate(weights)
    else:
        return None
    b = None if biases[0] is None else np.concatenate(biases)
    return w, b


def rms_norm(g: Graph, x: str, gamma: str, eps: float) -> str:
    return g.op("SimplifiedLayerNormalization", [x, gamma], axis=-1, epsilon=eps, stash_type=1)


def head_rms_norm(g: Graph, x: str, gamma: str, eps: float, heads: int, head_dim: int) -> str:
    """Gemma's QK-norm: RMSNorm over each head's vector.  (B, S, nh*hd) -> (B, S, nh, hd) -> back."""
    shape4 = g.init(f"shape/{x}/4d", np.array([0, 0, heads, head_dim], np.int64))
    shape3 = g.init(f"shape/{x}/3d", np.array([0, 0, heads * head_dim], np.int64))
    y = rms_norm(g, g.op("Reshape", [x, shape4]), gamma, eps)
    return g.op("Reshape", [y, shape3])


@dataclass(frozen=True)
class Layer:
    """What every block of one graph reads: its spec, weights and options, and the graph inputs."""
    spec: Spec
    weights: dict
    accuracy_level: int
    outliers: dict            # input key -> Outliers (build_graph)
    attention_stats: bool
    io: GraphIO
    positions: str            # (B, S) int64
    seqlens_k: str            # (B,) int32
    total_len: str            # () int32
    rope: dict                # key -> (cos, sin) initializer names
    cache_type: int           # the KV cache's element type
    per_element: int          # head_dim values per stored element (2 for int4)
    quant_attrs: dict         # GroupQueryAttention's KV quantization attributes ({} for a float cache)


def build_graph(spec: Spec, weights: dict, rope: dict[str, tuple[np.ndarray, np.ndarray]], *,
                kv_dtype: str = "float32", accuracy_level: int = 0,
                attention_stats: bool = False, head_topk: int = 0, cache: str = "",
                outliers: dict[str, Outliers] | None = None,
                saved: dict[str, onnx.TensorProto] | None = None) -> tuple[onnx.ModelProto, GraphIO, dict]:
    """weights: HF names -> float array (torch layout) or NBitsWeight; rope: key -> (cos, sin) (P, hd/2).
    kv_dtype: the float type of activations (and of the cache); cache: another KV cache dtype (a key
    of CACHE_FORMATS) under float32 activations; a quantized one takes per-layer scale inputs;
    outliers: input key ("model.layers.{i}.attn_in" / ".mlp_in" / ".down_in", "head_in") -> Outliers (their remainder in fp32);
    saved: initializers another graph of the package already wrote, referenced by name (one weights file).

    Returns the model, its IO names, and the KV tensor names per layer (and scale names, if any).
    """
    ft = TensorProto.FLOAT16 if kv_dtype == "float16" else TensorProto.FLOAT
    cache_type, per_element, quant_attrs = CACHE_FORMATS[cache or kv_dtype]
    g = Graph(ft, saved)
    io = GraphIO(attention_mass=[f"attention_mass.{i}" for i in range(spec.num_layers)] if attention_stats else [])
    outliers = outliers or {}
    ids = g.input(io.input_ids, TensorProto.INT64, ["batch", "seq"])
    pos = g.input(io.position_ids, TensorProto.INT64, ["batch", "seq"])
    seqlens_k = g.input(io.seqlens_k, TensorProto.INT32, ["batch"])
    total_len = g.input(io.total_sequence_length, TensorProto.INT32, [])
    keep = g.input(io.num_logits_to_keep, TensorProto.INT64, [])
    kv_names = {k: [] for k in ("past_key", "past_value", "present_key", "present_value")}
    scale_names = {"k_scale": [], "v_scale": []}
    rope_inits = {key: (g.init(f"rope/{key}/cos", c), g.init(f"rope/{key}/sin", s)) for key, (c, s) in rope.items()}
    layer = Layer(spec, weights, accuracy_level, outliers, attention_stats, io, pos, seqlens_k, total_len, rope_inits,
                  cache_type, per_element, quant_attrs)

    x, table, embed_name = embedding(g, spec, weights["model.embed_tokens.weight"], ids)
    residual, pending = x, None      # `pending` is the last sub-layer output not yet added to `residual`
    for i in range(spec.num_layers):
        residual, pending = block(g, layer, i, residual, pending, kv_names, scale_names)
    logits = head(g, layer, table, embed_name, pending, residual, keep, head_topk)
    if ft == TensorProto.FLOAT16:
        logits = g.op("Cast", [logits], to=TensorProto.FLOAT)
    g.output(logits, io.logits, TensorProto.FLOAT, ["batch", "keep", spec.vocab_size])

    graph = helper.make_graph(g.nodes, "slm_decoder", g.inputs, g.outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              ir_version=IR_VERSION, producer_name="slm")
    return model, io, kv_names | (scale_names if quant_attrs else {})


def embedding(g: Graph, spec: Spec, table, ids: str) -> tuple[str, object, str | None]:
    """ids (B, S) -> x (B, S, H), scaled by embed_scale (Gemma). Returns x, the table as the graph
    stores it (an 8-bit copy of a tied one, which the head shares) and the float table's name."""
    H, embed_name = spec.hidden_size, None
    if isinstance(table, NBitsWeight) and table.bits == 4 and not spec.tied_embeddings:
        x = gather_4bit_rows(g, table, ids)
    elif isinstance(table, NBitsWeight):
        # 8-bit blocks (V, H/bs, bs), dequantised on gather; the same bytes serve a tied lm_head's MatMulNBits
        if table.bits != 8 or table.zero_points.dtype != np.uint8:
            table = requantize_8bit(table, "the tied embedding/head (GatherBlockQuantized takes integer zero points)")
        scales3d, zp3d = table_gather_inputs(g, table)
        x = g.op("GatherBlockQuantized", [g.init("embed.qweight", table.packed()), ids, scales3d, zp3d],
                 domain=MS, gather_axis=0, quantize_axis=2, block_size=table.block_size, bits=8)
        x = g.op("Reshape", [x, g.init("shape/hidden", np.array([0, 0, H], np.int64))])
    else:
        embed_name = g.init("model.embed_tokens.weight", table)
        x = g.op("Gather", [embed_name, ids])
    if spec.embed_scale != 1.0:
        x = g.op("Mul", [x, g.init("embed_scale", np.array(spec.embed_scale, np.float32))])
    return x, table, embed_name


def block(g: Graph, layer: Layer, i: int, residual: str, pending: str | None, kv_names: dict,
          scale_names: dict) -> tuple[str, str]:
    """One decoder block (B, S, H) -> (B, S, H): norm, attention, norm, MLP, each residual add fused
    into the next norm (SkipSimplifiedLayerNormalization). Returns (residual, pending MLP output)."""
    spec, weights, outliers, eps = layer.spec, layer.weights, layer.outliers, layer.spec.rms_norm_eps
    p = f"model.layers.{i}."
    ln1 = g.init(p + "input_layernorm.weight", fold_outliers(weights[p + "input_layernorm.weight"], outliers.get(p + "attn_in")))
    if pending is None:
        h = rms_norm(g, residual, ln1, eps)
    else:
        h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [pending, residual, ln1], n_out=4,
                                 domain=MS, epsilon=eps)
    o = attention(g, layer, i, h, kv_names, scale_names)
    if spec.sandwich_norm:
        o = rms_norm(g, o, g.init(p + "post_attention_layernorm.weight", weights[p + "post_attention_layernorm.weight"]), eps)
        ln2_name = p + "pre_feedforward_layernorm.weight"
    else:
        ln2_name = p + "post_attention_layernorm.weight"
    ln2 = g.init(ln2_name, fold_outliers(weights[ln2_name], outliers.get(p + "mlp_in")))
    h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [o, residual, ln2],
                             n_out=4, domain=MS, epsilon=eps)
    pending = mlp(g, layer, i, h)
    if spec.sandwich_norm:
        pending = rms_norm(g, pending, g.init(p + "post_feedforward_layernorm.weight",
                                              weights[p + "post_feedforward_layernorm.weight"]), eps)
    return residual, pending


def attention(g: Graph, layer: Layer, i: int, h: str, kv_names: dict, scale_names: dict) -> str:
    """h (B, S, H) -> QKV (B, S, (nh + 2 nkv) hd) -> GroupQueryAttention over the cache (rotary at the
    position inputs, new K/V appended in the shared past/present buffer) (B, S, nh hd) -> o_proj (B, S, H)."""
    spec, weights, outliers, acc = layer.spec, layer.weights, layer.outliers, layer.accuracy_level
    nh, nkv, hd, eps = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.rms_norm_eps
    p = f"model.layers.{i}."
    a = p + "self_attn."
    projs = [weights[a + f"{n}_proj.weight"] for n in "qkv"]
    biases = [weights.get(a + f"{n}_proj.bias") for n in "qkv"]
    fused = fuse(projs, biases)
    if fused is not None:
        qkv = linear(g, h, fused[0], a + "qkv_proj", fused[1], acc, outliers.get(p + "attn_in"))
        if spec.qk_norm:
            q, k, v = g.op("Split", [qkv, g.init(a + "qkv_split", np.array([nh * hd, nkv * hd, nkv * hd], np.int64))],
                           n_out=3, axis=-1)
        else:
            q, k, v = qkv, "", ""                                # packed QKV into GQA
    else:
        q, k, v = (linear(g, h, w, a + f"{n}_proj", b, acc, outliers.get(p + "attn_in"))
                   for w, b, n in zip(projs, biases, "qkv"))
    if spec.qk_norm:
        q = head_rms_norm(g, q, g.init(a + "q_norm.weight", weights[a + "q_norm.weight"]), eps, nh, hd)
        k = head_rms_norm(g, k, g.init(a + "k_norm.weight", weights[a + "k_norm.weight"]), eps, nkv, hd)
    cache_shape = ["batch", nkv, "capacity", hd // layer.per_element]
    past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
    for name in (past_k, past_v):
        g.input(name, layer.cache_type, cache_shape)
    scales = []
    if layer.quant_attrs:     # (1, nkv, 1, hd) per layer, bound by the runtime from the package's calibration
        scales = ["", "", g.input(f"kv_scale.{i}.key", TensorProto.FLOAT, [1, nkv, 1, hd]),
                  g.input(f"kv_scale.{i}.value", TensorProto.FLOAT, [1, nkv, 1, hd])]
        scale_names["k_scale"].append(scales[2])
        scale_names["v_scale"].append(scales[3])
    cos, sin = layer.rope[spec.rope_of_layer[i]]
    window = spec.sliding_window[i]
    outs = g.op("GroupQueryAttention", [q, k, v, past_k, past_v, layer.seqlens_k, layer.total_len, cos, sin,
                                        layer.positions] + scales,
                n_out=4 if layer.attention_stats else 3, domain=MS, name=a + "gqa",
                num_heads=nh, kv_num_heads=nkv, scale=spec.attn_scale, do_rotary=1,
                local_window_size=window if window else -1, **({"qk_output": 2} if layer.attention_stats else {}),
                **layer.quant_attrs)
    attn, present_k, present_v = outs[:3]
    g.output(present_k, f"present.{i}.key", layer.cache_type, cache_shape)
    g.output(present_v, f"present.{i}.value", layer.cache_type, cache_shape)
    kv_names["past_key"].append(past_k)
    kv_names["past_value"].append(past_v)
    kv_names["present_key"].append(f"present.{i}.key")
    kv_names["present_value"].append(f"present.{i}.value")
    if layer.attention_stats:
        attention_mass(g, layer, i, outs[3], past_k)
    return linear(g, attn, weights[a + "o_proj.weight"], a + "o_proj", weights.get(a + "o_proj.bias"), acc)


def attention_mass(g: Graph, layer: Layer, i: int, probs: str, past_k: str) -> None:
    """The attention statistics output: GroupQueryAttention's softmax (B, nh, S, T) summed over the
    step's queries and each KV head's query group -> (B, nkv, T), padded to the cache capacity so
    the runtime binds one fixed buffer per layer."""
    nh, nkv = layer.spec.num_heads, layer.spec.num_kv_heads
    mass = g.op("ReduceSum", [probs, g.init(f"axes/{i}/q", np.array([2], np.int64))], keepdims=0)
    grouped = g.op("Reshape", [mass, g.init(f"shape/{i}/grouped", np.array([0, nkv, nh // nkv, -1], np.int64))])
    mass = g.op("ReduceSum", [grouped, g.init(f"axes/{i}/g", np.array([2], np.int64))], keepdims=0)
    cap = g.op("Slice", [g.op("Shape", [past_k]), g.init("s2", np.array([2], np.int64)), g.init("s3", np.array([3], np.int64))])
    total = g.op("Slice", [g.op("Shape", [mass]), g.init("s2", np.array([2], np.int64)), g.init("s3", np.array([3], np.int64))])
    pads = g.op("Concat", [g.init("zeros5", np.zeros(5, np.int64)), g.op("Sub", [cap, total])], axis=0)
    mass = g.op("Pad", [mass, pads])
    g.output(mass, layer.io.attention_mass[i], TensorProto.FLOAT, ["batch", nkv, "capacity"])


def mlp(g: Graph, layer: Layer, i: int, h: str) -> str:
    """h (B, S, H) -> gate, up (B, S, I) -> act(gate) * up -> down (B, S, H); act is SiLU or tanh-GELU."""
    weights, outliers, acc = layer.weights, layer.outliers, layer.accuracy_level
    p = f"model.layers.{i}."
    m = p + "mlp."
    inter = weights[m + "gate_proj.weight"].shape[0]
    down_in = outliers.get(p + "down_in")          # the down projection's input outliers, scaled in up's rows
    up_w = scale_rows(weights[m + "up_proj.weight"], down_in)
    fused = fuse([weights[m + "gate_proj.weight"], up_w], [None, None])
    if fused is not None:
        gate, up = g.op("Split", [linear(g, h, fused[0], m + "gate_up_proj", None, acc, outliers.get(p + "mlp_in")),
                                  g.init(m + "split", np.array([inter, inter], np.int64))], n_out=2, axis=-1)
    else:
        gate = linear(g, h, weights[m + "gate_proj.weight"], m + "gate_proj", None, acc, outliers.get(p + "mlp_in"))
        up = linear(g, h, up_w, m + "up_proj", None, acc, outliers.get(p + "mlp_in"))
    if layer.spec.activation == "silu":
        act = g.op("QuickGelu", [gate], domain=MS, alpha=1.0)          # x * sigmoid(x)
    else:
        act = g.op("FastGelu", [gate], domain=MS)                       # tanh-approximated GELU
    return linear(g, g.op("Mul", [act, up]), weights[m + "down_proj.weight"], m + "down_proj", None, acc, down_in)


def head(g: Graph, layer: Layer, table, embed_name: str | None, pending: str, residual: str, keep: str,
         head_topk: int) -> str:
    """The last `keep` positions (B, keep, H) -> final norm -> lm_head (shared with a tied embedding)
    -> logits (B, keep, V), soft-capped (Gemma)."""
    spec, weights, outliers, acc, H = layer.spec, layer.weights, layer.outliers, layer.accuracy_level, layer.spec.hidden_size
    start = g.op("Neg", [g.op("Unsqueeze", [keep, g.init("axes/0", np.array([0], np.int64))])])
    end, axis = g.init("slice/end", np.array([2 ** 62], np.int64)), g.init("slice/axis", np.array([1], np.int64))
    pending = g.op("Slice", [pending, start, end, axis])
    residual = g.op("Slice", [residual, start, end, axis])
    head_outliers = None if head_topk else outliers.get("head_in")       # the re-scored head reads the norm as is
    final_norm = g.init("model.norm.weight", fold_outliers(weights["model.norm.weight"], head_outliers))
    h = g.op("SkipSimplifiedLayerNormalization", [pending, residual, final_norm],
             domain=MS, epsilon=spec.rms_norm_eps)
    lm_head = weights.get("lm_head.weight", table)
    if isinstance(lm_head, np.ndarray) and lm_head is table and not isinstance(table, NBitsWeight):
        flat = g.op("Reshape", [h, g.init("shape/flat", np.array([-1, H], np.int64))])      # share the table
        logits = g.op("Gemm", [flat, embed_name], transB=1)
        logits = g.op("Reshape", [logits, g.op("Concat", [g.op("Slice", [g.op("Shape", [h]), g.init("s0", np.array([0], np.int64)),
                                                                           g.init("s2", np.array([2], np.int64))]),
                                                          g.init("vocab", np.array([spec.vocab_size], np.int64))], axis=0)])
    elif head_topk:                     # an 8-bit head through its 4-bit copy (export checked both are there)
        data = "embed.qweight" if lm_head is table else g.init("lm_head.qweight8", lm_head.packed())
        logits = topk_rescored_head(g, h, lm_head, data, "embed" if lm_head is table else "lm_head",
                                    weights[HEAD_APPROX], head_topk, acc, H)
    else:
        logits = linear(g, h, lm_head, "embed" if lm_head is table else "lm_head", None, acc, head_outliers)
    if spec.final_logit_softcap:
        c = g.init("logit_softcap", np.array(spec.final_logit_softcap, np.float32))
        logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, c])]), c])
    return logits
