"""The package-folder contract: what export writes and the runtime reads.

A package is a folder:

    manifest.json     this module's `Manifest`, with `format_version`
    model.onnx        the graph (+ model.onnx.data when the weights are large)
    tokenizer.json    a Hugging Face `tokenizers` file (none for a byte model)
    namm.npz          optional: an evolved NAMM eviction scorer (`slm evolve`)
    local.onnx        a byte model (architecture "megabyte") only: its local graph (`Patches`)
    model.kv-int8.onnx, model_attn.kv-int8.onnx, kv_scales.int8.npz, ...
                      optional: the same graphs with a float16 / int8 / int4 KV cache (`KVVariant`),
                      reading the same weights file, and the calibrated scales of a quantized cache

Format versions: 2 added `Patches` (byte models); a version-1 package is a version-2 package
without it and is read as such. `KVLayout.variants` and `Quantization.outliers` are additive
(absent: none).

Only this module parses manifest.json. Stdlib only: the runtime imports it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from slm.core.errors import PackageError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
ARCHITECTURES = ("llama", "gemma3", "megabyte")
QUANT_MODES = ("fp32", "fp16", "int8", "int4", "gguf", "compact")
KV_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8", "int4": "int4"}   # --kv-dtype -> manifest dtype
KV_DTYPE_NAMES = {v: k for k, v in KV_DTYPES.items()}                                 # manifest dtype -> --kv-dtype
KV_BITS = {"float32": 32, "float16": 16, "int8": 8, "int4": 4}


@dataclass(frozen=True)
class Dimensions:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int          # rotary tables cover positions [0, max_positions)


@dataclass(frozen=True)
class KVVariant:
    """The package's graphs with another KV cache dtype: same weights file, same IO names, plus (when
    quantized) one key and one value scale input per layer, (1, num_kv_heads, 1, head_dim) float32,
    bound from `scales_file`. GroupQueryAttention quantizes new keys and values with them inside the
    kernel (symmetric, round to nearest, saturating); int4 packs two values a byte along head_dim."""
    dtype: str                  # "float16" | "int8" | "int4"
    model_file: str
    attention_model_file: str = ""          # "" = no attention-statistics graph at this dtype
    quant_type: str = "NONE"                # GroupQueryAttention k_quant_type = v_quant_type
    k_scale: list[str] = field(default_factory=list)    # graph input names, one per layer
    v_scale: list[str] = field(default_factory=list)
    scales_file: str = ""                   # .npz: "key", "value" (num_layers, num_kv_heads, head_dim) float32
    calibration: str = ""                   # what the scales were measured on


@dataclass(frozen=True)
class KVLayout:
    """Each layer has one key and one value buffer, shape (batch, num_kv_heads, capacity, head_dim).

    The same buffer is bound as `past_*` input and `present_*` output (GroupQueryAttention's
    shared-buffer mode), so the runtime sizes `capacity` (its budget) at load time.
    """
    dtype: str                  # "float32" | "float16"
    past_key: list[str]         # graph input names, one per layer
    past_value: list[str]
    present_key: list[str]      # graph output names, one per layer
    present_value: list[str]
    default_capacity: int       # slots when no budget is given (the model's context)
    sliding_window: list[int]   # per layer: attention window in tokens, 0 = global
    variants: list[KVVariant] = field(default_factory=list)   # other KV dtypes (packages before them: none)

    def bytes_per_token(self, dims: Dimensions, dtype: str | None = None) -> int:
        """Bytes of keys and values one cached token takes at `dtype` (default: the package's)."""
        return 2 * dims.num_layers * dims.num_kv_heads * dims.head_dim * KV_BITS[dtype or self.dtype] // 8

    def fixed_bytes(self, dims: Dimensions, dtype: str | None = None) -> int:
        """Bytes a cache at `dtype` takes whatever its length: a quantized cache's float32 scales."""
        return 2 * dims.num_layers * dims.num_kv_heads * dims.head_dim * 4 if self.variant(dtype).k_scale else 0

    def dtypes(self) -> list[str]:
        return [self.dtype] + [v.dtype for v in self.variants]

    def variant(self, dtype: str | None) -> KVVariant:
        """The graphs of a KV dtype; the package's own dtype is the package's main graphs."""
        for v in self.variants:
            if v.dtype == dtype:
                return v
        if dtype in (None, self.dtype):
            return KVVariant(dtype=self.dtype, model_file="")
        short = KV_DTYPE_NAMES
        raise PackageError(f"this package has no {short.get(dtype, dtype)} KV cache graph (exported before quantized "
                           f"KV caches, or without that dtype); accepted here: "
                           f"{', '.join(short[d] for d in self.dtypes())}; re-export the package for the others")


@dataclass(frozen=True)
class Quantization:
    mode: str                   # one of QUANT_MODES
    bits: int = 0               # 4 or 8 for MatMulNBits; 0 when weights are float
    block_size: int = 0
    accuracy_level: int = 0     # MatMulNBits accuracy_level (4 = int8 activations on CPU)
    source: str = ""            # e.g. "gguf:Q4_1" when GGUF blocks were carried over
    notes: str = ""
    head_topk: int = 0          # > 0: the tied head is read at 4 bits and its top k logits re-scored from the 8-bit table
    outliers: int = 0           # > 0: up to this many calibrated outlier channels per input bypass int8 activations


@dataclass(frozen=True)
class GraphIO:
    input_ids: str = "input_ids"                        # int64 (batch, seq)
    position_ids: str = "position_ids"                  # int64 (batch, seq): true rotary positions
    seqlens_k: str = "seqlens_k"                        # int32 (batch,): cache slots used after this step - 1
    total_sequence_length: str = "total_sequence_length"  # int32 scalar: cache slots used after this step
    num_logits_to_keep: str = "num_logits_to_keep"      # int64 scalar: logits for the last n positions
    logits: str = "logits"                              # float32 (batch, n, vocab)
    attention_mass: list[str] = field(default_factory=list)  # per layer, when exported with stats


@dataclass(frozen=True)
class Rope:
    """Rotary embedding as the graph applies it (rotate-half layout), so the runtime can re-rotate
    cached keys when it moves them to new positions."""
    inv_freq: dict[str, list[float]]    # rotary kind -> head_dim/2 frequencies
    of_layer: list[str]                 # per layer: its rotary kind


@dataclass(frozen=True)
class Patches:
    """A byte model, MEGABYTE (Yu et al. 2023): no tokenizer, the vocabulary is the 256 byte values.

    The global graph (`Manifest.model_file`, described by the manifest's dims, kv and rope) runs once
    per patch of `patch_size` bytes: input `patch_ids` (batch, seq, patch_size), int64 bytes, the
    pad id standing for the learned pad patch before the first; output `local_context`
    (batch, keep, patch_size, local hidden), the context of each byte of the next patch. Its KV cache
    holds one slot per patch. The local graph (`local_model_file`) predicts the bytes of one patch:
    inputs `context` (batch, seq, local hidden), `input_ids` = the previous bytes of the patch (the pad
    id first), positions within the patch, its own cache of `patch_size` slots (reset every patch)
    and the usual GraphIO names; output `logits` (batch, seq, 256).
    """
    patch_size: int
    local_model_file: str
    local_dims: Dimensions          # vocab_size 256; max_positions = patch_size
    local_kv: KVLayout
    local_rope: Rope
    pad_id: int = 256               # input-only id: the pad patch (global) and a patch's start (local)
    end_of_turn: str = "\n\n"       # a chat turn ends with these bytes (a byte model has no EOS token)
    patch_ids: str = "patch_ids"
    local_context: str = "local_context"
    context: str = "context"


@dataclass(frozen=True)
class Manifest:
    architecture: str
    dims: Dimensions
    kv: KVLayout
    quant: Quantization
    io: GraphIO
    rope: Rope
    bos_token_id: int | None
    eos_token_ids: list[int]
    pad_token_id: int | None
    chat_template: str | None
    bos_token: str = ""
    eos_token: str = ""
    add_bos_token: bool = False
    model_file: str = "model.onnx"
    attention_model_file: str = ""  # the same model plus per-layer attention mass outputs ("" = none)
    tokenizer_file: str = "tokenizer.json"
    namm_file: str = ""         # an evolved NAMM eviction scorer (.npz, written by `slm evolve`; "" = none)
    source: str = ""            # what the package was exported from
    format_version: int = FORMAT_VERSION
    patches: Patches | None = None  # a byte model (architecture "megabyte"); then tokenizer_file is ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @staticmethod
    def from_dict(d: dict) -> "Manifest":
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            raise PackageError(f"manifest format_version {version!r} is not supported; this slm reads "
                               f"format_version {', '.join(map(str, READABLE_VERSIONS))} (re-export the package)")
        if d.get("architecture") not in ARCHITECTURES:
            raise PackageError(f"architecture {d.get('architecture')!r} is unknown; "
                               f"accepted: {', '.join(ARCHITECTURES)}")
        try:
            kv = {**d["kv"], "variants": [_build(KVVariant, v) for v in d["kv"].get("variants", [])]}
            m = Manifest(
                **{k: v for k, v in d.items() if k not in ("dims", "kv", "quant", "io", "rope", "patches")},
                dims=_build(Dimensions, d["dims"]), kv=_build(KVLayout, kv),
                quant=_build(Quantization, d["quant"]), io=_build(GraphIO, d["io"]), rope=_build(Rope, d["rope"]),
                patches=_build_patches(d["patches"]) if d.get("patches") is not None else None)
        except (KeyError, TypeError, AttributeError) as e:
            raise PackageError(f"manifest is missing or has a wrong field ({e}); re-export the package") from None
        if (m.architecture == "megabyte") != (m.patches is not None):
            raise PackageError(f"manifest of architecture {m.architecture!r} "
                               f"{'lacks' if m.patches is None else 'must not have'} the byte model's 'patches' "
                               f"section; re-export the package")
        if not m.tokenizer_file and m.patches is None:
            raise PackageError("manifest names no tokenizer_file; only a byte model (architecture megabyte) has none")
        return m


def _build(cls, d: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise TypeError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**d)


def _build_patches(d: dict) -> Patches:
    nested = {"local_dims": Dimensions, "local_kv": KVLayout, "local_rope": Rope}
    return _build(Patches, {k: _build(nested[k], v) if k in nested else v for k, v in d.items()})


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST
    path.write_text(manifest.to_json())
    return path


def read_manifest(folder: str | Path) -> Manifest:
    """Read and check a package folder; raise PackageError naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackageError(f"package {str(folder)!r} is not a folder; expected a package folder made by "
                           f"`slm export` or `slm pull` (with {MANIFEST}, model.onnx, tokenizer.json)")
    path = folder / MANIFEST
    if not path.is_file():
        raise PackageError(f"{str(folder)!r} has no {MANIFEST}; it is not an slm package "
                           f"(make one with `slm export SRC OUT`)")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{str(path)!r} is not valid JSON ({e}); the package is corrupt, re-export it") from None
    if not isinstance(d, dict):
        raise PackageError(f"{str(path)!r} holds {type(d).__name__}, expected a JSON object")
    m = Manifest.from_dict(d)
    optional = tuple(name for name in (m.tokenizer_file, m.attention_model_file, m.namm_file) if name)
    byte_model = (m.patches.local_model_file,) if m.patches else ()
    variants = tuple(name for v in m.kv.variants for name in (v.model_file, v.attention_model_file, v.scales_file) if name)
    for name in (m.model_file,) + byte_model + optional + variants:
        if not (folder / name).is_file():
            raise PackageError(f"package {str(folder)!r} lacks {name!r} named by its manifest; re-export it")
    return m
