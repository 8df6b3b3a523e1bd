"""Streaming detokenization against a real byte-level BPE tokenizer (SmolLM2's, from its GGUF)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from slm.runtime.detokenizer import StreamingDetokenizer

REPO = Path(__file__).resolve().parents[1]

TEXTS = {
    "ascii": "Hello, world! This is a plain ASCII sentence, with  two spaces and\nnew lines.\n\tTabbed.",
    "emoji": "I ❤️ 🦀 and 👨‍👩‍👧‍👦 families 🎉🎉 ok 👍🏽",
    "cjk": "日本語のテキストと中文字符，还有한국어。東京タワー",
    "mixed": "naïve café — Ελληνικά, русский, عربى; def f(x): return x**2  # 🐍 π≈3.14 世界!",
}


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory, smollm2_tokenizer) -> Tokenizer:
    path = tmp_path_factory.mktemp("smollm2") / "tokenizer.json"
    smollm2_tokenizer.backend_tokenizer.save(str(path))      # the real SmolLM2 tokenizer (tests/conftest.py)
    return Tokenizer.from_file(str(path))


def stream(tokenizer, ids, *, skip_special_tokens: bool = True) -> list[str]:
    detok = StreamingDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    return [detok.add(i) for i in ids] + [detok.flush()]


class DecodeSpy:
    """A tokenizer that records how many ids each decode call was given."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.lengths: list[int] = []

    def get_added_tokens_decoder(self):
        return self._tokenizer.get_added_tokens_decoder()

    def decode(self, ids, skip_special_tokens=True):
        self.lengths.append(len(ids))
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_streamed_text_equals_full_decode_without_replacement_characters(tokenizer, name):
    ids = tokenizer.encode(TEXTS[name]).ids
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == TEXTS[name]
    assert not any("\ufffd" in piece for piece in pieces)


def test_the_tokenizer_really_splits_characters_across_tokens(tokenizer):
    # The premise of the other tests: in byte-level BPE one emoji spans several tokens, and
    # decoding a prefix of them gives U+FFFD.
    ids = tokenizer.encode("🦀").ids
    assert len(ids) > 1
    assert "\ufffd" in tokenizer.decode(ids[:1])


def test_an_incomplete_character_is_held_back_until_complete(tokenizer):
    ids = tokenizer.encode("a🦀").ids
    pieces = stream(tokenizer, ids)
    assert pieces[0] == "a"
    assert all(piece == "" for piece in pieces[1:-2])  # the crab's first bytes: nothing yet
    assert pieces[-2] == "🦀"
    assert pieces[-1] == ""


def test_cjk_characters_arrive_whole(tokenizer):
    ids = tokenizer.encode(TEXTS["cjk"]).ids
    pieces = [p for p in stream(tokenizer, ids) if p]
    assert len(ids) > len(TEXTS["cjk"]) // 2  # several tokens per character somewhere
    assert "".join(pieces) == TEXTS["cjk"]
    assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_follow_skip_special_tokens(tokenizer, skip):
    text = "<|im_start|>user\nhi 🦀 there<|im_end|>\n<|im_start|>assistant\n你好<|im_end|>"
    ids = tokenizer.encode(text).ids
    assert 1 in ids and 2 in ids  # <|im_start|> and <|im_end|> are single special tokens
    pieces = stream(tokenizer, ids, skip_special_tokens=skip)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip)
    assert ("<|im_end|>" in "".join(pieces)) is (not skip)


def test_random_token_streams_match_full_decode(tokenizer):
    # Arbitrary ids include byte tokens that do not form valid UTF-8: the stream must still agree
    # with a decode of the whole sequence, U+FFFD included.
    rng = np.random.default_rng(0)
    vocab = tokenizer.get_vocab_size()
    for _ in range(30):
        ids = rng.integers(0, vocab, size=int(rng.integers(1, 60))).tolist()
        for skip in (True, False):
            assert "".join(stream(tokenizer, ids, skip_special_tokens=skip)) == tokenizer.decode(
                ids, skip_special_tokens=skip
            )


def test_byte_tokens_that_straddle_characters_match_full_decode(tokenizer):
    # Single-byte tokens chosen to build CJK and emoji one byte at a time.
    byte_ids = [tokenizer.token_to_id(t) for t in ("ä¸", "ĸ", "ç", "ķ", "Į", "ðŁ", "¦", "Ģ")]
    assert None not in byte_ids
    pieces = stream(tokenizer, byte_ids)
    assert "".join(pieces) == tokenizer.decode(byte_ids)
    assert not any("\ufffd" in p for p in pieces)


def test_cost_per_token_does_not_grow_with_the_text(tokenizer):
    text = " ".join([TEXTS["mixed"], TEXTS["emoji"], TEXTS["cjk"], TEXTS["ascii"]] * 40)
    ids = tokenizer.encode(text).ids
    assert len(ids) > 1500
    spy = DecodeSpy(tokenizer)
    detok = StreamingDetokenizer(spy)
    assert "".join(detok.add(i) for i in ids) + detok.flush() == text
    assert max(spy.lengths) <= 12  # a few tokens of context plus one partial character


def test_reset_starts_a_new_text(tokenizer):
    detok = StreamingDetokenizer(tokenizer)
    first = tokenizer.encode("abc 🦀").ids
    for i in first[:-1]:  # stop inside the crab: bytes are held
        detok.add(i)
    detok.reset()
    second = tokenizer.encode("fresh start 東京").ids
    assert "".join(detok.add(i) for i in second) + detok.flush() == "fresh start 東京"


def test_flush_returns_an_incomplete_character_as_the_full_decode_does(tokenizer):
    ids = tokenizer.encode("ok🦀").ids[:-1]
    detok = StreamingDetokenizer(tokenizer)
    streamed = "".join(detok.add(i) for i in ids)
    assert streamed == "ok"
    rest = detok.flush()
    assert streamed + rest == tokenizer.decode(ids)
    assert rest.endswith("\ufffd")
    assert detok.flush() == ""


def test_accepts_numpy_integer_ids(tokenizer):
    ids = np.asarray(tokenizer.encode("numpy ids 👍").ids, dtype=np.int64)
    detok = StreamingDetokenizer(tokenizer)
    assert "".join(detok.add(i) for i in ids) + detok.flush() == "numpy ids 👍"


def test_module_imports_neither_torch_nor_transformers():
    code = (
        "import sys, slm.runtime.detokenizer; "
        "bad = {'torch', 'transformers', 'onnx'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
