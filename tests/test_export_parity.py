"""ONNX vs PyTorch: logits and greedy tokens, for a tiny random model of each architecture."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from slm.export import build_package
from slm.runtime import Engine
from slm.core.package import read_manifest
from tests.conftest import tiny_gemma3, tiny_llama

ARCHS = {
    "llama": lambda: tiny_llama(),
    "llama-untied-gqa1": lambda: tiny_llama(tie_word_embeddings=False, num_key_value_heads=1, seed=1),
    "qwen2-biases": lambda: _tiny_qwen2(),
    "mistral-window": lambda: _tiny_mistral(),
    "gemma3": lambda: tiny_gemma3(),
}


def _tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(2)
    m = Qwen2ForCausalLM(Qwen2Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                     initializer_range=0.2, tie_word_embeddings=True)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)      # nonzero QKV biases, so dropping them would show
    return m


def _tiny_mistral():
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(3)
    return MistralForCausalLM(MistralConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                            sliding_window=16, initializer_range=0.2)).eval()


def graph_logits(package, ids: np.ndarray) -> np.ndarray:
    """All positions' logits from the exported graph in one call (no engine)."""
    m = read_manifest(package)
    s = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    n = ids.shape[1]
    feeds = {m.io.input_ids: ids, m.io.position_ids: np.arange(n, dtype=np.int64)[None],
             m.io.seqlens_k: np.array([n - 1], np.int32), m.io.total_sequence_length: np.array(n, np.int32),
             m.io.num_logits_to_keep: np.array(n, np.int64)}
    for name in m.kv.past_key + m.kv.past_value:
        feeds[name] = np.zeros((1, m.dims.num_kv_heads, n, m.dims.head_dim), np.dtype(m.kv.dtype))
    return s.run([m.io.logits], feeds)[0]


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported(request, tmp_path_factory, smollm2_tokenizer):
    model = ARCHS[request.param]()
    out = tmp_path_factory.mktemp("parity") / request.param
    build_package(None, out, quant="fp32", model=model, tokenizer=smollm2_tokenizer)
    return request.param, model, out


def test_prefill_logits_match_pytorch(exported):
    name, model, package = exported
    ids = np.random.default_rng(0).integers(3, 49152, size=(1, 40)).astype(np.int64)
    got = graph_logits(package, ids)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    diff = np.abs(got - ref).max()
    rel = diff / np.abs(ref).max()
    print(f"{name}: prefill max abs diff {diff:.2e}, relative {rel:.2e}")
    assert rel < 1e-5, f"{name}: logits differ by {diff} (relative {rel})"


def test_greedy_tokens_match_transformers_generate(exported):
    """32 greedy tokens through the engine (chunked prefill + shared-buffer decode) against HF generate:
    the engine's logits along HF's path equal HF's within a tolerance, and its tokens are HF's wherever
    HF's top-2 margin is wider than that tolerance (a closer tie may fall either way on another CPU)."""
    name, model, package = exported
    engine = Engine(package, threads=1, prefill_chunk=7)      # several prefill chunks on purpose
    prompt = "The quick brown fox jumps over the lazy dog, then runs into the forest to find"
    ids = engine.encode(prompt, raw=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                             pad_token_id=2, output_logits=True, return_dict_in_generate=True)
    ref = out.sequences[0, len(ids):].numpy()
    ref_logits = torch.cat(out.logits).float().numpy()                 # (32, vocab): the logits each token came from
    cache = engine.new_cache()
    forced = np.stack([engine.prefill(cache, ids).copy()] + [engine.decode_step(cache, int(t)).copy() for t in ref[:-1]])
    tolerance = 1e-4 * np.abs(ref_logits).max()
    assert np.abs(forced - ref_logits).max() < tolerance, f"{name}: logits differ along HF's tokens"
    top2 = np.sort(ref_logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tolerance
    assert clear.sum() >= 24, f"{name}: only {clear.sum()} of 32 steps have a clear argmax"    # the check bites
    assert (forced.argmax(1)[clear] == ref[clear]).all()
    got = [e.token for e in engine.generate(prompt, raw=True, max_tokens=32)]
    tie = next((i for i in range(32) if not clear[i]), 32)             # free-running: equal up to the first near-tie
    assert got[:tie] == ref[:tie].tolist(), f"{name}: first difference at token {next(i for i in range(tie) if got[i] != ref[i])}"


def test_decode_steps_match_full_forward(exported):
    """Each decode step's logits equal the full forward's at that position (positions, KV append)."""
    name, model, package = exported
    engine = Engine(package, threads=1)
    ids = list(np.random.default_rng(1).integers(3, 49152, size=24))
    cache = engine.new_cache()
    steps = [engine.prefill(cache, ids[:12]).copy()]
    for t in ids[12:]:
        steps.append(engine.decode_step(cache, int(t)).copy())
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = np.stack(steps[:-1])
    diff = np.abs(got - ref[11:23]).max() / np.abs(ref).max()
    assert diff < 1e-5, f"{name}: decode logits differ (relative {diff})"
