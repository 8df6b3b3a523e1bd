"""Block quantisation into ONNX Runtime's MatMulNBits layout.

One weight type, `NBitsWeight`, two ways to make it:

    quantize_rtn(w, bits, block_size)   round-to-nearest, asymmetric, from float weights
    quantize_fit(w, bits, block_size)   integer zero points, scale fitted by least squares (compact)
    from_gguf(tensor)                   carry a GGUF tensor's own blocks over unchanged

MatMulNBits computes  Y = A @ W.T  with  W[n, k] = (q[n, k] - zp[n, b]) * scale[n, b],  b = k // block_size.
Re-quantising a GGUF model's dequantised weights would quantise twice; carrying the blocks keeps the
GGUF's numbers exactly (Q4_1's `d*q + m` is `(q - (-m/d)) * d`, a float zero point).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockScales:
    """A GGUF block's scale (and offset, w = scale * code + offset) as the file stores it. The package
    stores these and the graph casts them back to float32 (exact), which ONNX Runtime folds once at
    load, so the file holds 16 bits a block instead of 32.

    Q4_0/Q4_1/Q5_0/Q8_0: one float16 scale (and Q4_1's offset) per block. The K-quants: one float16
    per super-block of 256 (d, and Q4_K's -dmin) and a small integer per sub-block (`scale_codes`,
    `offset_codes`: Q4_K's 6-bit scales and mins, Q6_K's int8 scales), scale = d * code, as llama.cpp
    computes it; the product of an fp16 and an integer below 2**7 is exact in float32."""
    scale: np.ndarray                     # float16 (N, K // block_size), or (N, K // 256) with scale_codes
    offset: np.ndarray | None             # float16 like scale, or None (integer zero points)
    row_scale: np.ndarray | None = None   # float32 (N,): output rows scaled after (slm.export.graph.scale_rows)
    scale_codes: np.ndarray | None = None     # K-quants: uint8/int8 (N, K // block_size)
    offset_codes: np.ndarray | None = None    # Q4_K: uint8 (N, K // block_size)

    def take_rows(self, rows: np.ndarray) -> "BlockScales":
        pick = lambda a: None if a is None else a[rows]
        return BlockScales(self.scale[rows], pick(self.offset), pick(self.row_scale), pick(self.scale_codes),
                           pick(self.offset_codes))

    def with_row_scale(self, rows: np.ndarray, alpha: np.ndarray) -> "BlockScales":
        row = np.ones(self.scale.shape[0], np.float32) if self.row_scale is None else self.row_scale.copy()
        row[rows] *= alpha
        return BlockScales(self.scale, self.offset, row, self.scale_codes, self.offset_codes)

    @property
    def structure(self) -> tuple[bool, bool, bool]:
        return self.offset is None, self.scale_codes is None, self.offset_codes is None

    def scales32(self) -> np.ndarray:
        """float32 (N, K // block_size): the scales the graph folds (before any row scale)."""
        return expand_factor(self.scale, self.scale_codes)

    def offsets32(self) -> np.ndarray:
        return expand_factor(self.offset, self.offset_codes)


def expand_factor(half: np.ndarray, codes: np.ndarray | None) -> np.ndarray:
    """float32 (N, blocks) from fp16 (N, blocks), or from fp16 (N, supers) times integer codes (N, blocks)."""
    f = half.astype(np.float32)
    if codes is None:
        return f
    n, supers = half.shape
    return (f[:, :, None] * codes.astype(np.float32).reshape(n, supers, -1)).reshape(n, -1)


def concat_block_scales(parts: list["BlockScales | None"]) -> "BlockScales | None":
    """Stacked along N when every part has the same structure, else None (float32 scales then)."""
    if any(p is None for p in parts) or any(p.structure != parts[0].structure for p in parts):
        return None
    rows = None
    if any(p.row_scale is not None for p in parts):
        rows = np.concatenate([np.ones(p.scale.shape[0], np.float32) if p.row_scale is None else p.row_scale
                               for p in parts])
    cat = lambda field: None if getattr(parts[0], field) is None else np.concatenate([getattr(p, field) for p in parts])
    return BlockScales(cat("scale"), cat("offset"), rows, cat("scale_codes"), cat("offset_codes"))


@dataclass(frozen=True)
class NBitsWeight:
    q: np.ndarray               # uint8 codes (N, K), each < 2**bits (unpacked; packed on export)
    scales: np.ndarray          # float32 (N, K // block_size)
    zero_points: np.ndarray     # uint8 or float32 (N, K // block_size)
    bits: int
    block_size: int
    source: str = "rtn"         # "rtn" or "gguf:<type>"
    stored: BlockScales | None = None   # a GGUF carry's scales as the file has them (what the package stores)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        n, k = self.q.shape
        q = self.q.reshape(n, k // self.block_size, self.block_size).astype(np.float32)
        zp = self.zero_points.astype(np.float32)[..., None]
        return ((q - zp) * self.scales[..., None]).reshape(n, k)

    def columns(self, channels: np.ndarray) -> np.ndarray:
        """The dequantised input columns `channels` (N, len(channels)), without dequantising the rest."""
        blocks = channels // self.block_size
        q = self.q[:, channels].astype(np.float32)
        return (q - self.zero_points[:, blocks].astype(np.float32)) * self.scales[:, blocks]

    def packed(self) -> np.ndarray:
        """B input of MatMulNBits: uint8 (N, K // block_size, block_size * bits // 8)."""
        n, k = self.q.shape
        q = self.q
        if self.bits == 4:
            q = q[:, 0::2] | (q[:, 1::2] << 4)
        return np.ascontiguousarray(q.reshape(n, k // self.block_size, -1))

    def packed_zero_points(self) -> np.ndarray:
        """zero_points input: float as is; uint8 4-bit packed two per byte along the blocks."""
        zp = self.zero_points
        if zp.dtype != np.uint8 or self.bits == 8:
            return np.ascontiguousarray(zp.reshape(-1))
        if zp.shape[1] % 2:
            zp = np.concatenate([zp, np.zeros((zp.shape[0], 1), np.uint8)], axis=1)
        return np.ascontiguousarray((zp[:, 0::2] | (zp[:, 1::2] << 4)).reshape(-1))

    def take_rows(self, rows: np.ndarray) -> "NBitsWeight":
        return NBitsWeight(self.q[rows], self.scales[rows], self.zero_points[rows], self.bits,
                           self.block_size, self.source, None if self.stored is None else self.stored.take_rows(rows))


def concat_rows(weights: list[NBitsWeight]) -> NBitsWeight:
    """Stack weights along N (fused QKV or gate/up projections); they must share bits and blocks."""
    first = weights[0]
    if any((w.bits, w.block_size, w.zero_points.dtype) != (first.bits, first.block_size, first.zero_points.dtype)
           for w in weights):
        raise ValueError("cannot fuse weights of different quantisation")
    return NBitsWeight(np.concatenate([w.q for w in weights]), np.concatenate([w.scales for w in weights]),
                       np.concatenate([w.zero_points for w in weights]), first.bits, first.block_size, first.source,
                       concat_block_scales([w.stored for w in weights]))


def quantize_rtn(w: np.ndarray, bits: int, block_size: int) -> NBitsWeight:
    """Asymmetric round-to-nearest per block of `block_size` inputs over the block's [min, max].

    4 bits: float zero points (llama.cpp's Q4_1 grid; exported through the fast symmetric kernel plus
    a per-block offset, see slm.export.graph.linear_float_zero_point). 8 bits: uint8 zero points, as
    ONNX Runtime's CPU kernel requires.
    """
    n, k = w.shape
    if k % block_size:
        raise ValueError(f"input size {k} is not a multiple of block_size {block_size}")
    qmax = 2 ** bits - 1
    blocks = w.astype(np.float32).reshape(n, k // block_size, block_size)
    lo, hi = blocks.min(-1), blocks.max(-1)
    if bits == 8:                                   # an integer zero point needs 0 inside the range
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = (hi - lo) / qmax
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    if bits == 8:
        zp = np.clip(np.rint(-lo / scale), 0, qmax).astype(np.uint8)
        q = np.clip(np.rint(blocks / scale[..., None]) + zp[..., None], 0, qmax)
    else:
        zp = (-lo / scale).astype(np.float32)
        q = np.clip(np.rint((blocks - lo[..., None]) / scale[..., None]), 0, qmax)
    return NBitsWeight(q.astype(np.uint8).reshape(n, k), scale, zp, bits, block_size, "rtn")


def quantize_symmetric(w: np.ndarray, bits: int, block_size: int) -> NBitsWeight:
    """Symmetric round-to-nearest per block (zero point 2**(bits-1), MatMulNBits' default and fastest
    kernel): the cheap approximate head that `head_topk` re-scores exactly."""
    n, k = w.shape
    half = 2 ** (bits - 1)
    blocks = w.astype(np.float32).reshape(n, k // block_size, block_size)
    scale = np.abs(blocks).max(-1) / (half - 1)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None]) + half, 0, 2 * half - 1)
    return NBitsWeight(q.astype(np.uint8).reshape(n, k), scale, np.full(scale.shape, float(half), np.float32),
                       bits, block_size, "rtn-symmetric")


FIT_STEPS = np.linspace(-1.5, 1.0, 11)     # candidate grids: (max - min) / (2**bits - 1 + step) per block
FIT_ROWS = 1024                             # rows fitted at a time (bounded temporaries)


def quantize_fit(w: np.ndarray, bits: int, block_size: int, importance: np.ndarray | None = None) -> NBitsWeight:
    """Asymmetric blocks with integer zero points, each block's grid chosen for least squared error:
    MatMulNBits' fastest layout (uint8 zero points, no side path), at 4 bits and block 64 4.56 bits a
    weight against 6 for quantize_rtn's float zero points at block 32.

    For each block, as llama.cpp's make_qkx2_quants does: try the min-max grid stretched by each of
    FIT_STEPS; for each, round to codes q and an integer zero point z, then refit the scale by least
    squares with q and z fixed, s = sum(i w (q - z)) / sum(i (q - z)^2); keep the candidate with the
    smallest sum(i (w - s (q - z))^2). `importance` (K,) weights the input channels (e.g. the mean
    square of their activations, as llama.cpp's imatrix); None weighs them equally.
    """
    n, k = w.shape
    if k % block_size:
        raise ValueError(f"input size {k} is not a multiple of block_size {block_size}")
    qmax = 2 ** bits - 1
    imp = np.ones((1, k // block_size, block_size), np.float32) if importance is None else \
        np.asarray(importance, np.float32).reshape(1, k // block_size, block_size)
    q_out = np.empty((n, k), np.uint8)
    s_out = np.empty((n, k // block_size), np.float32)
    z_out = np.empty((n, k // block_size), np.uint8)
    for r in range(0, n, FIT_ROWS):
        blocks = w[r:r + FIT_ROWS].astype(np.float32).reshape(-1, k // block_size, block_size)
        lo = np.minimum(blocks.min(-1), 0.0)
        hi = np.maximum(blocks.max(-1), 0.0)
        best_err = np.full(lo.shape, np.inf, np.float32)
        best_s, best_z = np.ones_like(lo), np.zeros(lo.shape, np.float32)
        best_q = np.zeros(blocks.shape, np.float32)
        for step in FIT_STEPS:
            scale = (hi - lo) / (qmax + step)
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            z = np.clip(np.rint(-lo / scale), 0, qmax)
            q = np.clip(np.rint(blocks / scale[..., None]) + z[..., None], 0, qmax)
            c = q - z[..., None]
            den = (imp * c * c).sum(-1)
            s = np.where(den > 0, (imp * blocks * c).sum(-1) / np.where(den > 0, den, 1.0), scale)
            err = (imp * (blocks - s[..., None] * c) ** 2).sum(-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s, best_z = np.where(better, s, best_s), np.where(better, z, best_z)
            best_q = np.where(better[..., None], q, best_q)
        rows = blocks.shape[0]
        q_out[r:r + rows] = best_q.reshape(rows, k).astype(np.uint8)
        s_out[r:r + rows] = np.where(best_s == 0, 1.0, best_s)
        z_out[r:r + rows] = best_z.astype(np.uint8)
    return NBitsWeight(q_out, s_out, z_out, bits, block_size, "fit")


# --- GGUF ------------------------------------------------------------------------------------------
# For each GGUF type: (bits of the codes, sub-block size, how to read each sub-block's scale and offset
# so that w = scale * code + offset). Codes then follow from gguf's own dequantisation.

def _f16_raw(raw: np.ndarray, at: int) -> np.ndarray:
    return raw[:, at:at + 2].copy().view(np.float16)[:, 0]


def _f16(raw: np.ndarray, at: int) -> np.ndarray:
    return _f16_raw(raw, at).astype(np.float32)


def _q4_k_scale_min(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K 6-bit sub-block scales and mins packed in 12 bytes (llama.cpp get_scale_min_k4)."""
    s = raw[:, 4:16].astype(np.uint8)
    sc = np.empty((raw.shape[0], 8), np.float32)
    mn = np.empty((raw.shape[0], 8), np.float32)
    for j in range(8):
        if j < 4:
            sc[:, j], mn[:, j] = s[:, j] & 63, s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, mn


def _scales_q4_0(raw):
    d = _f16(raw, 0)[:, None]
    return d, -8 * d


def _scales_q4_1(raw):
    return _f16(raw, 0)[:, None], _f16(raw, 2)[:, None]


def _scales_q5_0(raw):
    d = _f16(raw, 0)[:, None]
    return d, -16 * d


def _scales_q8_0(raw):
    d = _f16(raw, 0)[:, None]
    return d, -128 * d


def _scales_k4(raw):
    sc, mn = _q4_k_scale_min(raw)
    return _f16(raw, 0)[:, None] * sc, -_f16(raw, 2)[:, None] * mn


def _scales_q6_k(raw):
    s = raw[:, 192:208].copy().view(np.int8).astype(np.float32)
    d = _f16(raw, 208)[:, None] * s
    return d, -32 * d


def _factors_d(raw):                       # Q4_0, Q5_0, Q8_0: scale d, integer zero point
    return _f16_raw(raw, 0), None


def _factors_q4_1(raw):                    # scale d, offset m
    return _f16_raw(raw, 0), _f16_raw(raw, 2)


def _factors_q4_k(raw):                    # d x 6-bit sub-scale, -dmin x 6-bit sub-min
    sc, mn = _q4_k_scale_min(raw)
    return _f16_raw(raw, 0), -_f16_raw(raw, 2), sc.astype(np.uint8), mn.astype(np.uint8)


def _factors_q6_k(raw):                    # d x int8 sub-scale, integer zero point 32
    return _f16_raw(raw, 208), None, raw[:, 192:208].copy().view(np.int8), None


def _plain(factors):
    return lambda raw: (*factors(raw), None, None)


# The types whose factors the package stores, as (scale, offset, scale codes, offset codes) per block
# row: a Cast (K-quants: two Casts and a Mul) over constants, which ONNX Runtime folds at load. Q4_K and
# Q6_K's d x integer sub-block scales once went through DequantizeLinear, which ONNX Runtime's constant
# folding leaves in the graph (it keeps QDQ pairs for its quantisation fusions): MatMulNBits then read
# unfolded scales and the 1.5B package's perplexity went to +288,640% (docs/BENCHMARKS.md). Cast and
# Mul fold (tests/test_quantize.py checks the folded constants bit for bit).
FACTORS = {"Q4_0": _plain(_factors_d), "Q4_1": _plain(_factors_q4_1), "Q5_0": _plain(_factors_d),
           "Q8_0": _plain(_factors_d), "Q4_K": _factors_q4_k, "Q6_K": _factors_q6_k}


# type name: (block bytes, values per block, code bits, sub-block size, scale reader)
GGUF_BLOCKS = {
    "Q4_0": (18, 32, 4, 32, _scales_q4_0),
    "Q4_1": (20, 32, 4, 32, _scales_q4_1),
    "Q5_0": (22, 32, 8, 32, _scales_q5_0),
    "Q8_0": (34, 32, 8, 32, _scales_q8_0),
    "Q4_K": (144, 256, 4, 32, _scales_k4),
    "Q6_K": (210, 256, 8, 16, _scales_q6_k),
}


def from_gguf(raw: np.ndarray, type_name: str, dequantized: np.ndarray) -> NBitsWeight:
    """Carry one GGUF tensor into MatMulNBits form.

    raw: uint8 (N, bytes per row) as gguf.GGUFReader gives it; dequantized: float32 (N, K) from
    gguf.quants.dequantize. Types with 5-bit or 6-bit codes go into 8-bit containers.
    Raises KeyError for a type without an exact mapping (the caller re-quantises and records that).
    """
    block_bytes, per_block, bits, sub, read_scales = GGUF_BLOCKS[type_name]
    n, k = dequantized.shape
    blocks = raw.reshape(n * (k // per_block), block_bytes)
    scale, offset = read_scales(blocks)                       # (n*blocks, subs)
    scale = scale.reshape(n, k // sub)
    offset = offset.reshape(n, k // sub)
    flat = scale == 0
    safe = np.where(flat, 1.0, scale).astype(np.float32)
    w = dequantized.reshape(n, k // sub, sub)
    codes = np.rint((w - offset[..., None]) / safe[..., None])
    codes = np.where(flat[..., None], 0, codes)
    if codes.min() < 0 or codes.max() >= 2 ** bits:
        raise ValueError(f"GGUF {type_name} codes out of range [{codes.min()}, {codes.max()}]")
    zp = -offset / safe                                        # w = (code - zp) * scale
    if bits == 8:                                              # ORT wants uint8 zero points at 8 bits
        zp_int = np.rint(zp)
        if np.abs(zp - zp_int).max() > 1e-3:
            raise KeyError(type_name)
        # a block of zero scale reads 0: codes and zero point both the type's constant (Q8_0 128, Q6_K 32)
        const = zp_int[~flat].flat[0] if (~flat).any() else 0
        codes = np.where(flat[..., None], const, codes)
        zp = np.where(flat, const, zp_int).astype(np.uint8)
    else:       # a block of zero scale holds its offset: codes 8, zero point 8 - offset (8 for Q4_0: symmetric)
        codes = np.where(flat[..., None], 8, codes)
        zp = np.where(flat, 8 - offset, zp).astype(np.float32)
    stored = None
    if type_name in FACTORS:
        sc, oc, scodes, ocodes = FACTORS[type_name](blocks)
        rows = lambda a: None if a is None else a.reshape(n, -1)
        stored = BlockScales(rows(sc), rows(oc), None, rows(scodes), rows(ocodes))
        # the factors must give the blocks' own scales and offsets exactly, or they are not stored
        if not (np.array_equal(stored.scales32(), scale) and
                (stored.offset is None or np.array_equal(stored.offsets32(), offset))):
            stored = None
    return NBitsWeight(codes.astype(np.uint8).reshape(n, k), safe, zp, bits, sub, f"gguf:{type_name}", stored)
