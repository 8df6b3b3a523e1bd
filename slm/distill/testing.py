"""Tiny random students for tests and CI: a 2-layer Llama with the real SmolLM2 tokenizer, built in-process."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from slm.distill.student import smollm2_gguf


def save_tiny_student(folder: str | Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """Write an HF checkpoint folder (random weights, SmolLM2 tokenizer) and return its path."""
    folder = Path(folder)
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
