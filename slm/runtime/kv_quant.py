"""A quantized KV cache's codes in numpy, as ONNX Runtime's GroupQueryAttention stores them.

    int8:  x ~ q * scale,        q int8 in [-128, 127]            (one value a byte)
    int4:  x ~ (n - 8) * scale,  n a 4-bit code in [0, 15]         (two a byte along head_dim, low nibble first)

symmetric, round to nearest, saturating; `scale` per (KV head, channel), (H, 1, head_dim) against a
cache slice (H, n, head_dim). bench/gqa_quant_kv.py checks the reading against the kernel's buffers.
Used where the runtime itself reads or rewrites cached keys: a policy scoring keys (knorm, namm) and
re-positioning (keys dequantised, rotated, requantised).
"""
from __future__ import annotations

import numpy as np

STORAGE = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "int4": np.uint8}
PER_BYTE = {"int4": 2}           # values per stored element along head_dim (1 for the others)


def dequantize(codes: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Stored cache values (…, n, stored head_dim) -> float32 (…, n, head_dim)."""
    if dtype == "int8":
        return codes.astype(np.float32) * scale
    if dtype == "int4":
        lo, hi = (codes & 0xF).astype(np.int8) - 8, (codes >> 4).astype(np.int8) - 8
        return np.stack([lo, hi], -1).reshape(codes.shape[:-1] + (codes.shape[-1] * 2,)).astype(np.float32) * scale
    return codes.astype(np.float32)


def quantize(x: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """float (…, n, head_dim) -> the codes the cache stores at `dtype`."""
    if dtype == "int8":
        return np.clip(np.rint(x / scale), -128, 127).astype(np.int8)
    if dtype == "int4":
        n = (np.clip(np.rint(x / scale), -8, 7) + 8).astype(np.uint8)
        return n[..., 0::2] | (n[..., 1::2] << 4)
    return x.astype(STORAGE[dtype])
