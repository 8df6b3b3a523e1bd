"""Incremental, UTF-8 safe detokenization: token ids in, new text out, one token at a time.

The prefix-offset / read-offset method of Hugging Face text-generation-inference
(`decode_token` in server/text_generation_server/models/model.py), also used by vLLM and mlx-lm:
decode only a short window of trailing tokens, twice, and emit the difference.

    window:  [ ... tokens already emitted ... | tokens not yet emitted ]
              ^ prefix_offset                 ^ read_offset
    prefix_text = decode(window[prefix_offset:read_offset])
    full_text   = decode(window[prefix_offset:])
    new text    = full_text[len(prefix_text):]   if it is longer and does not end in U+FFFD

Decoding the already-emitted tokens again as context keeps decoders that treat the first token
specially (SentencePiece strips its leading space) consistent with a decode of the whole text.
A byte-level BPE token can end in the middle of a multi-byte character (an emoji, a CJK
character); the decode then ends in U+FFFD and the text is held back until the character is
complete. The window is dropped up to `prefix_offset` on every emission, so the cost per token
depends on the window, not on the length of the text.
"""
from __future__ import annotations

import codecs

from tokenizers import Tokenizer

REPLACEMENT_CHARACTER = "\ufffd"

# A character is at most 4 UTF-8 bytes and almost every token carries at least one, so valid text
# is never held this long. Only a stream of invalid bytes (which decodes to U+FFFD anyway) is, and
# this bound keeps the window, and so the cost per token, from growing without limit.
MAX_HELD_TOKENS = 64


class StreamingDetokenizer:
    """Turns a stream of token ids into text pieces whose concatenation is the decoded text.

    `"".join(add(t) for t in ids) + flush() == tokenizer.decode(ids, skip_special_tokens=...)`.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # Dropped here rather than by decode(), so that a run of them never grows the window.
        self._skipped_ids = (
            frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
            if skip_special_tokens
            else frozenset()
        )
        self.reset()

    def reset(self) -> None:
        """Forget all tokens: the next `add` starts a new text."""
        self._window: list[int] = []
        self._prefix_offset = 0  # window[prefix_offset:read_offset] was emitted, kept as context
        self._read_offset = 0    # window[read_offset:] is not emitted yet

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Take one token id; return the text it completes ("" while a character is incomplete)."""
        token_id = int(token_id)
        if token_id in self._skipped_ids:
            return ""
        self._window.append(token_id)
        prefix_text = self._decode(self._window[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._window[self._prefix_offset :])
        held = len(self._window) - self._read_offset
        complete = len(full_text) > len(prefix_text) and not full_text.endswith(REPLACEMENT_CHARACTER)
        if not complete and held < MAX_HELD_TOKENS:
            return ""
        self._window = self._window[self._read_offset :]  # the new context is the text just emitted
        self._prefix_offset, self._read_offset = 0, len(self._window)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """End the text: return whatever is held back (an incomplete character decodes to U+FFFD)."""
        prefix_text = self._decode(self._window[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._window[self._prefix_offset :])
        self.reset()
        return full_text[len(prefix_text) :]


class ByteDetokenizer:
    """The same for a byte model: byte values in, text out. A character whose UTF-8 bytes are not
    all there yet is held back; invalid bytes decode to U+FFFD (the codecs incremental decoder).

    `"".join(add(b) for b in data) + flush() == bytes(data).decode("utf-8", errors="replace")`.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, byte: int) -> str:
        return self._decoder.decode(bytes((int(byte),)))

    def flush(self) -> str:
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return out
