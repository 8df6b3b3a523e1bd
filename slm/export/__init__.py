"""slm/export/: a Hugging Face causal LM (folder, GGUF, hub id) -> an slm package folder.

    build_package(source, out, quant="int4")

writes model.onnx (GroupQueryAttention, MatMulNBits), tokenizer.json and manifest.json.
"""
from __future__ import annotations

import gc
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slm.export.architectures import float_weights, rotary_tables, spec_of
from slm.export.calibrate import activation_outliers, input_importance
from slm.export.graph import HEAD_APPROX, approximate_head, build_graph
from slm.export.kv_calibration import calibration_ids, kv_ranges, measure_kv, write_scales
from slm.export.quantize import NBitsWeight, quantize_fit, quantize_rtn
from slm.core.errors import SlmError, SourceError
from slm.core.package import (KV_DTYPES, KVLayout, KVVariant, Manifest, QUANT_MODES, Quantization, Rope,
                         read_manifest, write_manifest)
from slm.export.load import load_model
from slm.core.sources import Source, resolve_source

EXTERNAL_DATA_BYTES = 1 << 30       # weights past 1 GiB go to an external file
WEIGHTS_FILE = "weights.data"
ATTENTION_MODEL = "model_attn.onnx"
DEFAULT_MAX_POSITIONS = 8192
KV_VARIANTS = ("fp16", "int8", "int4")   # extra KV cache dtypes exported beside the fp32 cache's graphs
KV_QMAX = {"int8": 127, "int4": 7}
KV_CLIP = {"int8": "absmax", "int4": "mse"}     # docs/LONGCTX.md, "A quantized KV cache": measured both
# absmax ranges x this; kv_calibration.HEADROOM (x1.5) helps SmolLM2's int8 cache and hurts
# Qwen2.5-Coder-1.5B's (docs/LONGCTX.md), so the export keeps the ranges as measured
KV_HEADROOM = {"int8": 1.0, "int4": 1.0}


def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def _is_linear(name: str) -> bool:
    return name.endswith("_proj.weight") or name == "lm_head.weight"


BLOCK_SIZE = {"int4": 32, "int8": 32, "compact": 64}   # default block size of each re-quantising mode


def quantize_weights(weights: dict, mode: str, *, block_size: int | None = None, gguf_path: str | None = None,
                     head_dim: int = 0, importance: dict[str, np.ndarray] | None = None,
                     k_quant_scales: str = "float32") -> tuple[dict, Quantization]:
    """Replace linear (and embedding) weights according to `mode`; return them and the record.
    importance: weight name -> (K,) weight of each input channel in the compact fit (input_importance)."""
    if mode in ("fp32", "fp16"):
        return weights, Quantization(mode=mode)
    out = dict(weights)
    block_size = block_size or BLOCK_SIZE.get(mode, 32)
    if mode == "compact":
        # every weight at 4 bits with integer zero points (MatMulNBits' fast layout, no side path); a tied
        # embedding/head table at 8 bits, as GatherBlockQuantized reads it. From a GGUF this re-quantises
        # its blocks (the fit is to the GGUF's own values): docs/BENCHMARKS.md, "Compact packages"
        # the fit weighs each input channel by its calibration mean square (a tied table by the head's input)
        tied = "lm_head.weight" not in weights
        importance = importance or {}
        for name, w in weights.items():
            if _is_linear(name) or name == "model.embed_tokens.weight":
                imp = importance.get("lm_head.weight" if name == "model.embed_tokens.weight" and tied else name)
                out[name] = quantize_fit(w, 8 if tied and name == "model.embed_tokens.weight" else 4, block_size,
                                         None if imp is None else imp + 1e-6 * float(imp.mean()))
        return out, Quantization(mode=mode, bits=4, block_size=block_size,
                                 notes="integer zero points, scales fitted by least squares per block"
                                       + (", weighted by calibration activations' mean square" if importance else "")
                                       + ("; tied embedding/head at 8 bits" if tied else ""))
    if mode == "gguf":
        from slm.export.gguf_carry import carry_gguf
        carried, report = carry_gguf(gguf_path, weights, head_dim, k_quant_scales)
        out.update(carried)
        types = ",".join(f"{k}x{v}" for k, v in sorted(report["types"].items()))
        notes = f"blocks carried from GGUF ({types}); max |dequant - transformers| = {report['max_abs_diff']:.2g}"
        if any(k in report["types"] for k in ("Q4_K", "Q6_K")):
            notes += "; K-quant scales stored as " + ("the file's factors" if k_quant_scales == "gguf" else "float32")
        if report["requantized_8bit"]:
            from slm.export.quantize import GGUF_BLOCKS
            again = sorted({typ for _, typ, _ in report["requantized_8bit"]})
            worst = max(err for _, _, err in report["requantized_8bit"])
            notes += f"; re-quantised to 8 bits: {len(report['requantized_8bit'])} tensors ({', '.join(again)})"
            _log(f"re-quantised {len(report['requantized_8bit'])} tensors of type {', '.join(again)} to 8 bits (RTN, "
                 f"block 32): they have no exact MatMulNBits form (carried exactly: {', '.join(GGUF_BLOCKS)}); "
                 f"measured cost: max |w - GGUF| = {worst:.2%} of the tensor's largest weight")
        wide = {k: v for k, v in report["types"].items() if k in ("Q5_0", "Q6_K")}
        if wide:
            _log(f"carried {', '.join(f'{k} x{v}' for k, v in sorted(wide.items()))} (5/6-bit codes) exactly in "
                 f"MatMulNBits' 8-bit containers: 8 bits a code instead of 5/6 (docs/BENCHMARKS.md)")
        bits = min(w.bits for w in carried.values())
        return out, Quantization(mode="gguf", bits=bits, block_size=min(w.block_size for w in carried.values()),
                                 source=f"gguf:{types}", notes=notes)
    bits = {"int4": 4, "int8": 8}[mode]
    for name, w in weights.items():
        if _is_linear(name) or name == "model.embed_tokens.weight":
            # embeddings and the head keep 8 bits, as the shipped GGUF keeps them (Q8_0). Not measured alone at
            # 4 bits here; genai int4, which takes them to 4 bits too (symmetric), is +46% perplexity against
            # fp32 (docs/BENCHMARKS.md, "Greedy agreement on 54 prompts"); --head-topk reads the head at 4
            b = 8 if name in ("model.embed_tokens.weight", "lm_head.weight") else bits
            out[name] = quantize_rtn(w, b, block_size)
    return out, Quantization(mode=mode, bits=bits, block_size=block_size,
                             notes="round-to-nearest asymmetric; embedding and lm_head at 8 bits")


def _fine_tuned_from_gguf(src) -> str | None:
    """The GGUF a `slm distill train` checkpoint folder started from, as its training_record.json
    says (`student_source`), or None for any other source."""
    if getattr(src, "kind", "") != "hf":
        return None
    record = Path(src.path) / "training_record.json"
    if not record.is_file():
        return None
    try:
        started = json.loads(record.read_text()).get("student_source") or {}
    except ValueError as e:
        _log(f"warning: {record} is not valid JSON ({e}); not checking what the student started from")
        return None
    return started.get("path") if started.get("kind") == "gguf" else None


@dataclass(frozen=True)
class ExportOptions:
    """How `build_package` exports (the `slm export` flags), as one value."""
    quant: str | None = None            # QUANT_MODES; None: "gguf" for a GGUF source, "int4" otherwise
    accuracy_level: int = 4             # MatMulNBits accuracy_level (4: int8 activations)
    block_size: int | None = None       # None: the mode's BLOCK_SIZE (32; 64 for compact)
    max_positions: int | None = None    # rotary table length (None: min(model's, DEFAULT_MAX_POSITIONS))
    attention_stats: bool = True        # also write the graph with attention-mass outputs
    head_topk: int = 0                  # > 0: a tied 8-bit head read at 4 bits, its top k re-scored
    outliers: int = 8                   # with int8 activations: outlier channels per input through fp32 (0 = off)
    kv_dtypes: tuple[str, ...] = KV_VARIANTS   # KV cache dtypes besides fp32 to write graphs for
    k_quant_scales: str = "float32"     # a GGUF carry's Q4_K/Q6_K scales: float32, or the file's factors ("gguf")


def _topk_head(weights: dict, spec, head_topk: int, quant: str) -> NBitsWeight:
    """The 8-bit head that --head-topk re-scores: the tied table (an 8-bit copy of it, as the embedding
    gathers it) or an untied lm_head in 8-bit blocks with integer zero points (int4/int8's, a GGUF's
    Q8_0, or Q6_K in its 8-bit container); else an error naming what the head is."""
    head = weights["model.embed_tokens.weight"] if spec.tied_embeddings else weights.get("lm_head.weight")
    if spec.tied_embeddings and isinstance(head, NBitsWeight):
        return head
    if isinstance(head, NBitsWeight) and head.bits == 8 and head.zero_points.dtype == np.uint8:
        return head
    what = (f"{head.bits}-bit blocks ({head.source})" if isinstance(head, NBitsWeight) else "float weights")
    raise SlmError(f"--head-topk {head_topk} needs the head in 8-bit blocks (quant gguf, int4 or int8; a tied table, "
                   f"or an untied lm_head in Q8_0/Q6_K/int8 blocks); this export is quant {quant!r}, "
                   f"tied={spec.tied_embeddings}, and its head is {what}")


def build_package(source: str | Source | None, out: str | Path, options: ExportOptions = ExportOptions(), *,
                  model=None, tokenizer=None, overwrite: bool = True, **changes) -> Manifest:
    """Export `source` into the package folder `out` as `options` say (keyword `changes` replace
    some of its fields: `build_package(src, out, quant="int8")`). `quant=None` picks "gguf" for a
    GGUF source (its own blocks carried over) and "int4" otherwise; "compact" re-quantises to 4-bit
    blocks with integer zero points (smaller and faster, not exact). `model`/`tokenizer` skip loading
    (tests). `outliers`: with int8 activations (accuracy_level 4), up to this many outlier channels
    per quantised input go through an exact fp32 path (slm.export.calibrate; 0 = off).
    kv_dtypes: KV cache dtypes besides fp32 to write graphs for (`--kv-dtype` at run time); an fp16
    export (fp16 activations, rarely worth it on a CPU) keeps only its fp16 cache, though the CPU
    kernel would also run an int8 cache under fp16 activations."""
    o = replace(options, **changes)
    quant, accuracy_level, block_size, max_positions = o.quant, o.accuracy_level, o.block_size, o.max_positions
    attention_stats, head_topk, outliers, kv_dtypes = o.attention_stats, o.head_topk, o.outliers, o.kv_dtypes
    t0 = time.time()
    src = source if isinstance(source, Source) or model is not None else resolve_source(source)
    base = _fine_tuned_from_gguf(src)
    if quant is None:
        quant = "gguf" if getattr(src, "kind", "") == "gguf" else "int8" if base else "int4"
        if base:
            _log(f"a student fine-tuned from the quantised GGUF {base!r}: exporting at int8 (int4 would round "
                 f"the fine-tune back toward the base model, see docs/DISTILL.md); --quant overrides")
    elif quant == "int4" and base:
        _log(f"warning: this student was fine-tuned from the quantised GGUF {base!r}; int4 rounds its weights "
             f"back toward the base model's (docs/DISTILL.md measured 0.5% against 37.5% on SVAMP); prefer --quant int8, "
             f"or --quant compact for 4 bits on a fitted grid (45.5% against PyTorch's 43.0% there)")
    if quant not in QUANT_MODES:
        raise SourceError(f"--quant {quant!r} is not a quantisation mode; accepted: {', '.join(QUANT_MODES)}")
    if quant == "gguf" and getattr(src, "kind", "") != "gguf":
        raise SourceError("--quant gguf carries a GGUF file's blocks; the source is not a .gguf (use int4 or int8)")
    from slm.export.gguf_carry import K_QUANT_SCALES
    if o.k_quant_scales not in K_QUANT_SCALES:
        raise SlmError(f"--k-quant-scales {o.k_quant_scales!r} is not a layout; accepted: {', '.join(K_QUANT_SCALES)}")
    if model is None:
        _log(f"loading {src.path} ({src.kind})")
        model, tokenizer = load_model(src)
    config = model.config
    max_pos = max_positions or min(getattr(config, "max_position_embeddings", DEFAULT_MAX_POSITIONS), DEFAULT_MAX_POSITIONS)
    spec = spec_of(config, max_pos)
    weights = float_weights(model, spec)
    rope = rotary_tables(model, spec, max_pos)
    _log(f"{spec.architecture}: {spec.num_layers} layers, hidden {spec.hidden_size}, heads {spec.num_heads}/{spec.num_kv_heads}; quantising ({quant})")
    importance = None
    if quant == "compact":
        _log("measuring each linear input's activations on the calibration text (slm/export/calibrate.py) for the fit")
        importance = input_importance(model, tokenizer)
    weights, qrec = quantize_weights(weights, quant, block_size=block_size, importance=importance,
                                     gguf_path=getattr(src, "path", None), head_dim=spec.head_dim,
                                     k_quant_scales=o.k_quant_scales)
    if head_topk < 0 or head_topk > spec.vocab_size:
        raise SlmError(f"--head-topk {head_topk} must be 0 (off) or between 1 and the vocabulary ({spec.vocab_size})")
    if head_topk:
        weights[HEAD_APPROX] = approximate_head(_topk_head(weights, spec, head_topk, quant))
    qrec = Quantization(**{**qrec.__dict__, "accuracy_level": accuracy_level if qrec.bits else 0, "head_topk": head_topk})
    if outliers < 0:
        raise SlmError(f"--outliers {outliers} must be 0 (off) or the most channels per input kept in fp32")
    channels = {}
    if outliers and qrec.bits and accuracy_level == 4:
        channels = activation_outliers(model, tokenizer, outliers)
        _log(f"calibrated int8-activation outliers: {sum(len(o.channels) for o in channels.values())} channels over "
             f"{len(channels)} inputs go through fp32 (at most {outliers} per input)")
    qrec = Quantization(**{**qrec.__dict__, "outliers": outliers if channels else 0,
                           "notes": qrec.notes + (f"; {sum(len(o.channels) for o in channels.values())} outlier channels in fp32 "
                                                  f"(LLM.int8() decomposition)" if channels else "")})
    kv_dtype = "float16" if quant == "fp16" else "float32"
    eos_ids = _eos_ids(model, tokenizer)
    del model         # our reference: the fp32 weights are freed once only the carried blocks are needed
    gc.collect()
    _log("building the graph")
    onnx_model, io, kv = build_graph(spec, weights, rope, kv_dtype=kv_dtype, accuracy_level=accuracy_level,
                                     head_topk=head_topk, outliers=channels)
    out = Path(out)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    bad = [d for d in kv_dtypes if d not in KV_VARIANTS]
    if bad:
        raise SlmError(f"kv_dtypes {bad} are not exportable KV cache dtypes; accepted: {', '.join(KV_VARIANTS)} "
                       f"(fp32 is always there)")
    kv_dtypes = () if kv_dtype == "float16" else tuple(kv_dtypes)
    saved = {}
    if attention_stats or kv_dtypes:
        saved = _save_shared(onnx_model, out / "model.onnx")
        del onnx_model
    else:
        _save_onnx(onnx_model, out / "model.onnx")
    # every further graph references the initializers already written (no second copy in memory)
    build = lambda **kw: build_graph(spec, weights, rope, kv_dtype=kv_dtype, accuracy_level=accuracy_level,
                                     head_topk=head_topk, outliers=channels, saved=saved, **kw)
    if attention_stats:
        _log("building the attention-statistics graph (for attention-based KV eviction)")
        attn_model, io, _ = build(attention_stats=True)
        _save_sharing(attn_model, out / ATTENTION_MODEL, saved)
        del attn_model
    variants = _export_kv_variants(out, kv_dtypes, build, saved, attention_stats, spec, kv, tokenizer, io, max_pos)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    manifest = Manifest(
        architecture=spec.architecture,
        dims=spec.dims,
        kv=KVLayout(dtype=kv_dtype, default_capacity=max_pos, sliding_window=list(spec.sliding_window),
                    variants=variants, **kv),
        quant=qrec, io=io, rope=_rope_record(rope, spec),
        attention_model_file=ATTENTION_MODEL if attention_stats else "",
        bos_token_id=tokenizer.bos_token_id, eos_token_ids=eos_ids,
        pad_token_id=tokenizer.pad_token_id, chat_template=getattr(tokenizer, "chat_template", None),
        bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "",
        add_bos_token=bool(getattr(tokenizer, "add_bos_token", False)),
        source=str(getattr(src, "path", "in-memory model")))
    write_manifest(out, manifest)
    read_manifest(out)      # what we wrote must be what the runtime accepts
    size = sum(f.stat().st_size for f in out.iterdir()) / 2 ** 20
    _log(f"wrote {out} ({size:.0f} MiB) in {time.time() - t0:.0f} s")
    return manifest


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    gen = getattr(model, "generation_config", None)
    for v in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _rope_record(rope: dict, spec) -> Rope:
    """inv_freq from the exported tables: the angle at position 1 (frequencies are < pi)."""
    inv = {k: np.arctan2(sin[1], cos[1]).astype(float).tolist() for k, (cos, sin) in rope.items()}
    return Rope(inv_freq=inv, of_layer=list(spec.rope_of_layer))


def _export_kv_variants(out: Path, dtypes: tuple[str, ...], build, saved: dict, attention_stats: bool, spec,
                        kv: dict, tokenizer, io, max_pos: int) -> list[KVVariant]:
    """The graphs again with each other KV cache dtype, reading the same weights file; a quantized
    cache's scales calibrated on slm/export/kv_calibration.py's text through the fp32-cache graph."""
    if not dtypes:
        return []
    samples = None
    if any(d in KV_QMAX for d in dtypes):
        _log("calibrating KV cache scales (slm/export/kv_calibration.py's text and corpus)")
        chat = None
        if getattr(tokenizer, "chat_template", None):
            chat = lambda messages: tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                                  return_dict=False)
        ids = calibration_ids(lambda text: tokenizer(text).input_ids, chat)
        samples = measure_kv(out / "model.onnx", kv, spec, ids, io, max_len=min(max_pos, 1024))
    variants = []
    for short in dtypes:
        dtype = KV_DTYPES[short]
        _log(f"building the graphs with a {short} KV cache")
        files = {"model_file": f"model.kv-{short}.onnx"}
        model, _, names = build(cache=dtype)
        _save_sharing(model, out / files["model_file"], saved)
        del model
        if attention_stats:
            files["attention_model_file"] = f"model_attn.kv-{short}.onnx"
            model, _, _ = build(cache=dtype, attention_stats=True)
            _save_sharing(model, out / files["attention_model_file"], saved)
            del model
        if short in KV_QMAX:
            files["scales_file"] = f"kv_scales.{short}.npz"
            ranges = kv_ranges(*samples, KV_QMAX[short], KV_CLIP[short], KV_HEADROOM[short])
            write_scales(out / files["scales_file"], *ranges, KV_QMAX[short])
            files.update(quant_type="PER_CHANNEL", k_scale=names["k_scale"], v_scale=names["v_scale"],
                         calibration=f"slm/export/kv_calibration.py ({KV_CLIP[short]}, headroom x{KV_HEADROOM[short]}, "
                                     f"{sum(map(len, ids))} tokens): "
                                     f"rotation-invariant key range and value range per layer, KV head and channel, "
                                     f"/ {KV_QMAX[short]}")
        variants.append(KVVariant(dtype=dtype, **files))
    return variants


def _save_shared(model, path: Path) -> dict:
    """Save `model` with its weights in WEIGHTS_FILE; return its initializers as external references,
    for other graphs to read the same bytes (`_save_sharing`)."""
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=WEIGHTS_FILE, size_threshold=1024)
    return {t.name: t for t in onnx.load(str(path), load_external_data=False).graph.initializer}


def _save_sharing(model, path: Path, saved: dict) -> None:
    """Save `model` with every initializer `saved` holds pointing at the bytes already written."""
    import onnx

    inits = [saved.get(t.name, t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    onnx.save_model(model, str(path))


def _save_onnx(model, path: Path) -> None:
    import onnx

    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=WEIGHTS_FILE, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
