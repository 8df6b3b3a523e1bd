"""From a transformers model to the graph's `Spec`, weights and rotary tables: one function per family,
chosen by a lookup on `config.model_type`."""
from __future__ import annotations

import math

import numpy as np

from slm.export.graph import Spec
from slm.core.errors import SourceError
from slm.core.package import Dimensions


def _text_config(config):
    return getattr(config, "text_config", None) or config


def llama_spec(config, max_positions: int) -> Spec:
    """Llama 2/3, SmolLM2, Mistral, Qwen2 (QKV biases come through the weights)."""
    c = _text_config(config)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    window = getattr(c, "sliding_window", None) or 0
    if not getattr(c, "use_sliding_window", True):   # Qwen2 declares a window but does not use it by default
        window = 0
    if c.hidden_act not in ("silu", "swish"):
        raise SourceError(f"activation {c.hidden_act!r} is not supported for {c.model_type}; accepted: silu")
    dims = Dimensions(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                      num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
                      head_dim=head_dim, max_positions=max_positions)
    return Spec(architecture="llama", dims=dims, rms_norm_eps=c.rms_norm_eps, activation="silu", attn_scale=head_dim ** -0.5,
                sliding_window=(window,) * c.num_hidden_layers, rope_of_layer=("default",) * c.num_hidden_layers,
                tied_embeddings=bool(getattr(c, "tie_word_embeddings", False)))


def gemma3_spec(config, max_positions: int) -> Spec:
    """Gemma 3: sliding-window and global layers with their own rotary bases, QK-norm, embeddings
    scaled by sqrt(hidden), RMSNorm as x * (1 + w) before and after each sub-layer."""
    c = _text_config(config)
    if c.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise SourceError(f"Gemma 3 activation {c.hidden_activation!r} is not supported; accepted: gelu_pytorch_tanh")
    if getattr(c, "attn_logit_softcapping", None):
        raise SourceError("Gemma attention logit softcapping is not supported by this exporter")
    types = tuple(c.layer_types)
    dims = Dimensions(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                      num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
                      max_positions=max_positions)
    return Spec(architecture="gemma3", dims=dims, rms_norm_eps=c.rms_norm_eps,
                activation="gelu_tanh", attn_scale=c.query_pre_attn_scalar ** -0.5,
                sliding_window=tuple(c.sliding_window if t == "sliding_attention" else 0 for t in types),
                rope_of_layer=types, qk_norm=True, sandwich_norm=True,
                embed_scale=math.sqrt(c.hidden_size),
                final_logit_softcap=float(getattr(c, "final_logit_softcapping", None) or 0.0),
                tied_embeddings=bool(getattr(c, "tie_word_embeddings", True)))


FAMILIES = {
    "llama": llama_spec, "mistral": llama_spec, "qwen2": llama_spec,
    "gemma3": gemma3_spec, "gemma3_text": gemma3_spec,
}
NORM_PLUS_ONE = {"gemma3"}      # families whose RMSNorm multiplies by (1 + w)


def spec_of(config, max_positions: int) -> Spec:
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise SourceError(f"architecture {config.model_type!r} is not supported; accepted: {', '.join(sorted(FAMILIES))}")
    return family(config, max_positions)


def float_weights(model, spec: Spec) -> dict[str, np.ndarray]:
    """The model's tensors as float32 numpy in HF names (norm weights folded to 1 + w for Gemma)."""
    out = {}
    for name, t in model.state_dict().items():
        name = name.replace("model.language_model.", "model.")
        arr = t.detach().float().numpy()
        if spec.architecture in NORM_PLUS_ONE and "norm" in name:
            arr = arr + 1.0
        out[name] = arr
    if spec.tied_embeddings:
        out.pop("lm_head.weight", None)
    return out


def rotary_tables(model, spec: Spec, max_positions: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cos/sin (max_positions, head_dim/2) per rotary kind, from the model's own rotary module so
    that every RoPE variant transformers implements (llama3, yarn, linear, ...) comes out right."""
    import torch

    inner = model.model if hasattr(model, "model") else model
    inner = getattr(inner, "language_model", inner)
    rotary = inner.rotary_emb
    pos = torch.arange(max_positions, dtype=torch.int64)[None]
    x = torch.zeros(1, dtype=torch.float32)
    tables = {}
    with torch.no_grad():
        for key in sorted(set(spec.rope_of_layer)):
            cos, sin = rotary(x, pos) if key == "default" else rotary(x, pos, key)
            half = spec.head_dim // 2
            tables[key] = (cos[0, :, :half].float().numpy(), sin[0, :, :half].float().numpy())
    return tables
