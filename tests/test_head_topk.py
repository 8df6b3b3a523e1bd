"""--head-topk: a tied head read at 4 bits whose top k logits are re-scored from the 8-bit table."""
import numpy as np
import pytest

from slm.export import build_package
from slm.runtime import Engine
from slm.core.errors import SlmError
from slm.core.package import read_manifest
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def pair(tmp_path_factory, smollm2_tokenizer):
    """The same tiny model exported with the plain 8-bit head and with head_topk=16, fp32 activations."""
    out = tmp_path_factory.mktemp("topk")
    model = tiny_llama()
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


def test_head_topk_needs_a_quantised_tied_head(tmp_path, smollm2_tokenizer):
    with pytest.raises(SlmError, match=r"--head-topk 8 needs a tied head stored as 8-bit blocks .* quant 'fp32'"):
        build_package(None, tmp_path / "x", quant="fp32", model=tiny_llama(), tokenizer=smollm2_tokenizer, head_topk=8)
