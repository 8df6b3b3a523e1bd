"""Carry a GGUF file's quantised blocks into MatMulNBits weights, checked against transformers' load.

transformers dequantises the GGUF (and, for Llama, un-permutes the Q/K rows that llama.cpp's
converter interleaved). We read the same blocks with `gguf`, keep their codes and scales, reorder
rows the way transformers did, and require the result to dequantise to transformers' weights.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from slm.export.quantize import NBitsWeight, concat_rows, from_gguf, quantize_rtn

_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _NAMES:
        return _NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.weight"
    return None


def _llama_unpermute(n_rows: int, head_dim: int) -> np.ndarray:
    """Row order transformers uses for llama.cpp's interleaved-rotary Q/K rows."""
    heads = n_rows // head_dim
    return np.arange(n_rows).reshape(heads, head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)


CHUNK_ROWS = 4096      # rows carried and checked at a time: a 151,936 x 1,536 embedding never sits in fp32 whole


def _carry_in_chunks(raw: np.ndarray, tensor_type, shape: tuple[int, int], dequantize) -> NBitsWeight:
    """from_gguf over row chunks (the float temporaries of one chunk at a time), joined."""
    n, k = shape
    raw = raw.reshape(n, -1)
    parts = [from_gguf(raw[r:r + CHUNK_ROWS], tensor_type.name,
                       dequantize(raw[r:r + CHUNK_ROWS], tensor_type).reshape(-1, k).astype(np.float32))
             for r in range(0, n, CHUNK_ROWS)]
    return parts[0] if len(parts) == 1 else concat_rows(parts)


K_QUANT_SCALES = ("float32", "gguf")     # how a package stores Q4_K/Q6_K scales (ExportOptions.k_quant_scales)


def carry_gguf(path: str, hf_weights: dict[str, np.ndarray], head_dim: int,
               k_quant_scales: str = "float32") -> tuple[dict[str, NBitsWeight], dict]:
    """Return {hf name: NBitsWeight} for every quantised linear/embedding tensor, and a report.

    k_quant_scales: "float32" stores Q4_K/Q6_K scales (and Q4_K's side-path offsets) as float32, which
    ONNX Runtime reads as they are; "gguf" stores the file's own factors (fp16 d x integer sub-block
    codes, in the GGUF's bytes for Q4_K), folded at load: ~1.1x the GGUF on disk instead of ~1.4x,
    for a higher peak RSS while the session opens (docs/BENCHMARKS.md, "K-quant scales").

    Types without an exact MatMulNBits form (5-bit types with float mins) are re-quantised to 8 bits
    from transformers' dequantised weights and counted in the report.
    """
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(path)
    carried, report = {}, {"types": {}, "requantized_8bit": [], "max_abs_diff": 0.0}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None or t.tensor_type.name in ("F32", "F16", "BF16"):
            continue
        target = hf_weights.get(name)
        if target is None and name == "lm_head.weight":
            continue                            # tied: the embedding serves as the head
        if target is None:
            raise ValueError(f"GGUF tensor {t.name} maps to {name}, which transformers did not load")
        try:
            w = _carry_in_chunks(np.asarray(t.data), t.tensor_type, target.shape, dequantize)
        except KeyError:
            w = quantize_rtn(target, 8, 32)
            err = float(np.abs(w.dequantize() - target).max() / max(float(np.abs(target).max()), 1e-12))
            report["requantized_8bit"].append((name, t.tensor_type.name, err))
            carried[name] = w
            continue
        orders, n_rows = [None], target.shape[0]
        if name.endswith(("q_proj.weight", "k_proj.weight")) and target.shape[0] % head_dim == 0:
            orders.append(_llama_unpermute(target.shape[0], head_dim))
        for rows in orders:
            cand = w if rows is None else w.take_rows(rows)
            diff = max(float(np.abs(cand.take_rows(np.arange(r, min(r + CHUNK_ROWS, n_rows))).dequantize()
                                    - target[r:r + CHUNK_ROWS]).max()) for r in range(0, n_rows, CHUNK_ROWS))
            if diff <= 1e-4 * max(1.0, float(np.abs(target).max())):
                break
        else:
            raise ValueError(f"GGUF blocks of {t.name} ({t.tensor_type.name}) do not reproduce transformers' "
                             f"weights (max diff {diff:.3g}); refusing to carry them")
        if k_quant_scales == "float32" and t.tensor_type.name in ("Q4_K", "Q6_K"):
            cand = dataclasses.replace(cand, stored=None)
        carried[name] = cand
        report["types"][t.tensor_type.name] = report["types"].get(t.tensor_type.name, 0) + 1
        report["max_abs_diff"] = max(report["max_abs_diff"], diff)
    return carried, report
