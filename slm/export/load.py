"""A model source (slm.core.sources.Source) -> (model, tokenizer) through transformers: for slm/export/ and slm/distill/."""
from __future__ import annotations

from pathlib import Path

from slm.core.errors import SourceError
from slm.core.sources import Source


def load_model(source: Source, dtype: str = "float32"):
    """Load (model, tokenizer) with transformers. GGUF weights come back dequantised."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    try:
        if source.kind == "gguf":
            folder, name = str(Path(source.path).parent), Path(source.path).name
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
            forget_gguf_quantization(model)
        else:
            tok = AutoTokenizer.from_pretrained(source.path)
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype)
    except OSError as e:
        raise SourceError(f"cannot load {source.path!r}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise SourceError(f"cannot load {source.path!r}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, tok


def forget_gguf_quantization(model) -> None:
    """Drop the GGUF quantisation record so save_pretrained works: the weights are plain tensors."""
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False
