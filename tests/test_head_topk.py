"""--head-topk: an 8-bit head (tied table or untied lm_head) read at 4 bits, its top k logits re-scored from the 8-bit blocks."""
import numpy as np
import pytest

from slm.export import build_package
from slm.runtime import Engine
from slm.core.errors import SlmError
from slm.core.package import read_manifest
from tests.conftest import tiny_llama


@pytest.fixture(scope="module", params=["tied", "untied"])
def pair(request, tmp_path_factory, smollm2_tokenizer):
    """The same tiny model exported with the plain 8-bit head and with head_topk=16, fp32 activations:
    a tied table, and an untied lm_head (int4's 8-bit head with per-block zero points)."""
    out = tmp_path_factory.mktemp("topk")
    model = tiny_llama(tie_word_embeddings=request.param == "tied")
    plain = build_package(None, out / "plain", quant="int4", accuracy_level=0, model=model, tokenizer=smollm2_tokenizer,
                          attention_stats=False)
    topk = build_package(None, out / "topk", quant="int4", accuracy_level=0, model=model, tokenizer=smollm2_tokenizer,
                         attention_stats=False, head_topk=16)
    assert plain.quant.head_topk == 0 and topk.quant.head_topk == 16
    return out / "plain", out / "topk"


def _logits(package, ids):
    engine = Engine(package, threads=1)
    cache = engine.new_cache(64)
    rows = [engine.prefill(cache, ids[:8]).copy()]
    rows += [engine.decode_step(cache, t).copy() for t in ids[8:]]
    return np.array(rows)


def test_top_k_logits_are_the_8bit_heads_and_the_tail_is_4bit(pair):
    ids = [1, 532, 2014, 88, 7, 4410, 91, 300, 12, 900, 45, 6000]
    plain, topk = (_logits(p, ids) for p in pair)
    same = np.abs(topk - plain) <= 1e-4 * (1 + np.abs(plain))
    # the 16 re-scored logits are the 8-bit head's: most of the 16 largest (12-15 measured; the candidates
    # are the 4-bit head's top 16, so a tail logit can overtake one), where chance agreement is ~0.1%
    top16 = np.argsort(-topk, axis=1)[:, :16]
    assert (np.take_along_axis(same, top16, axis=1).sum(1) >= 10).all(), same
    assert same[np.arange(len(ids) - 7), plain.argmax(1)].all()   # and the argmax is one of them
    assert (topk.argmax(1) == plain.argmax(1)).all()
    # the rest really is the 4-bit approximation: not the 8-bit values, yet close to them
    assert (~same).mean() > 0.99, same.sum(1)
    assert all(np.corrcoef(a, b)[0, 1] > 0.98 for a, b in zip(topk, plain))
    assert read_manifest(pair[1]).quant.head_topk == 16


def test_head_topk_needs_an_8bit_head(tmp_path, smollm2_tokenizer):
    with pytest.raises(SlmError, match=r"--head-topk 8 needs the head in 8-bit blocks .* quant 'fp32', tied=True, "
                                       r"and its head is float weights"):
        build_package(None, tmp_path / "x", quant="fp32", model=tiny_llama(), tokenizer=smollm2_tokenizer, head_topk=8)


@pytest.mark.parametrize("stored", ["float32 scales", "the GGUF's factors"])
def test_a_q6_k_head_is_re_scored_from_its_own_blocks(stored):
    """A GGUF's untied Q6_K output (8-bit containers, sub-blocks of 16, zero point 32), as the 1.5B model
    has it: the re-scored logits are the exact head's (fp32 arithmetic over the dequantised blocks), the
    argmax is among them, the tail is the 4-bit copy's."""
    from dataclasses import replace

    import gguf
    import onnxruntime as ort
    from gguf.quants import dequantize
    from onnx import TensorProto, helper

    from slm.export.graph import IR_VERSION, MS, OPSET, Graph, approximate_head, topk_rescored_head
    from slm.export.quantize import from_gguf
    from tests.test_quantize import _random_gguf_blocks

    V, H, k = 512, 256, 8
    raw = _random_gguf_blocks("Q6_K", V, H, 7)
    exact = from_gguf(raw, "Q6_K", dequantize(raw, gguf.GGMLQuantizationType.Q6_K).reshape(V, H).astype(np.float32))
    assert exact.bits == 8 and exact.block_size == 16 and exact.stored is not None
    exact = exact if stored == "the GGUF's factors" else replace(exact, stored=None)
    g = Graph(TensorProto.FLOAT)
    h = g.input("h", TensorProto.FLOAT, [1, 3, H])
    data = g.init("lm_head.qweight8", exact.packed())
    approx = approximate_head(exact, rows=100)                      # in chunks: the same copy as at once
    assert np.array_equal(approx.q, approximate_head(exact).q) and approx.bits == 4
    g.output(topk_rescored_head(g, h, exact, data, "lm_head", approx, k, 0, H), "logits", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(g.nodes, "t", g.inputs, g.outputs, g.inits), ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    x = np.random.default_rng(3).standard_normal((1, 3, H)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"h": x})[0][0]
    ref = x[0].astype(np.float64) @ exact.dequantize().T
    tail = x[0].astype(np.float64) @ approx.dequantize().T
    top = np.argsort(-tail, axis=1)[:, :k]                          # the candidates: the 4-bit copy's top k
    close = lambda a, b: np.abs(a - b) <= 1e-5 * np.abs(b).max()
    assert close(np.take_along_axis(got, top, 1), np.take_along_axis(ref, top, 1)).all()     # re-scored exactly
    rest = np.ones_like(got, bool)
    np.put_along_axis(rest, top, False, 1)
    assert close(got[rest], tail[rest]).all() and not close(tail, ref).all()                  # the rest: 4-bit
    assert (got.argmax(1) == ref.argmax(1)).all()
