"""Constrained decoding: a JSON Schema, a regex or a Lark grammar, enforced token by token.

    Constraint.json_schema({...}) ─► Grammars.compile (against the package's tokenizer.json) ─► Guide
    each step:  logits ─► guide.mask (-inf where the grammar forbids) ─► sample ─► guide.consume(token)

The enforcement is llguidance's (Moskal et al., github.com/guidance-ai/llguidance: an Earley parser
over a lexer, walking the tokenizer's token trie for each mask; the library ONNX Runtime GenAI and
vLLM use). End-of-sequence is in the mask only where the grammar accepts, and a grammar that can take
no more bytes (a closed JSON object) is `complete`: the engine then ends the reply. A `Constraint` is
a frozen description (hashable, cheap); `Grammars` owns the tokenizer and compiles; a `Guide` is one
generation's parser state.
"""
from __future__ import annotations

from collections.abc import Callable

import json
import re
from dataclasses import dataclass

import llguidance as llg
import numpy as np

from slm.core.errors import SlmError

KINDS = ("json_schema", "regex", "lark")
_NAMES = {"json_schema": "JSON Schema", "regex": "regex", "lark": "Lark grammar"}
# Compact JSON, spaced as json.dumps writes it: a small model left free whitespace may pad forever.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(SlmError):
    """A schema, regex or grammar that does not compile, or asks for what cannot be enforced."""

    def __init__(self, message: str, *, keyword: str | None = None):
        super().__init__(message)
        self.keyword = keyword      # the unenforceable JSON Schema keyword, when that is the reason


@dataclass(frozen=True)
class Constraint:
    kind: str       # one of KINDS
    source: str     # the schema as JSON text, the regex, or the Lark grammar

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConstraintError(f"constraint kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConstraintError(f"the {_NAMES[self.kind]} is empty; give a non-empty one")

    @classmethod
    def json_schema(cls, schema: dict | bool | str) -> Constraint:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"the JSON Schema is not valid JSON: {e.msg} (line {e.lineno}, "
                                      f"column {e.colno})") from None
        if not isinstance(schema, (dict, bool)):
            raise ConstraintError(f"a JSON Schema is an object (or true/false), not a JSON {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema, ensure_ascii=False))   # key order is the order generated

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls("regex", pattern)

    @classmethod
    def lark(cls, grammar: str) -> Constraint:
        return cls("lark", grammar)

    def grammar(self) -> str:
        """llguidance's grammar text for this constraint (not yet checked)."""
        if self.kind == "json_schema":
            return llg.LLMatcher.grammar_from_json_schema(self.source, defaults=JSON_OPTIONS)
        if self.kind == "regex":
            return llg.LLMatcher.grammar_from_regex(self.source)
        return llg.LLMatcher.grammar_from_lark(self.source)


_UNIMPLEMENTED = re.compile(r'Unimplemented keys: \["([^"]+)"')
_DATA_KEYWORDS = ("const", "enum", "default", "examples", "x-guidance")     # values, not subschemas
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")   # name -> schema
MAX_LOCATE = 200        # subschema compiles spent finding where a schema fails (each ~0.5 ms)


def _pointer(path: list[str]) -> str:
    """A JSON Pointer as a URI fragment: ["properties", "a/b"] -> "#/properties/a~1b"."""
    return "#" + "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


class Grammars:
    """Compiles constraints for one tokenizer; built once per engine (~0.3 s for a 49k vocabulary).

    `vocab_size` is the model's logits width, which may exceed the tokenizer's (padded embeddings):
    ids past the tokenizer are never allowed."""

    def __init__(self, tokenizer_json: str, *, vocab_size: int, eos_ids: list[int]):
        self.vocab_size = vocab_size
        self.tokenizer = llg.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(eos_ids))
        self._bytes: frozenset[int] | None = None

    def token_bytes(self) -> frozenset[int]:
        """Every byte value some token of the vocabulary holds (computed once, when first asked). A
        byte-level BPE vocabulary may lack some: SmolLM2's has no token with 0xF1, so it cannot write
        U+40000..U+7FFFF at all."""
        if self._bytes is None:
            seen = set()
            for t in range(self.tokenizer.vocab_size):
                seen.update(self.tokenizer.decode_bytes([t]))
            self._bytes = frozenset(seen)
        return self._bytes

    def check(self, constraint: Constraint) -> str:
        """The compiled grammar text, or ConstraintError naming where the constraint is wrong (for a
        JSON Schema, the JSON Pointer of the smallest subschema that fails on its own)."""
        grammar, message = self._compile(constraint)
        if message is None:
            return grammar
        at = ""
        if constraint.kind == "json_schema":
            at = " at " + _pointer(self._locate(json.loads(constraint.source), message, [], [MAX_LOCATE]))
        unimplemented = _UNIMPLEMENTED.search(message)
        if unimplemented:
            keyword = unimplemented.group(1)
            raise ConstraintError(f"the JSON Schema keyword {keyword!r} cannot be enforced while decoding{at} "
                                  f"(llguidance {llg.__version__} does not implement it); remove it, or "
                                  f"validate it after generation ({message})", keyword=keyword)
        raise ConstraintError(f"the {_NAMES[constraint.kind]} does not compile{at}: {message}")

    def _compile(self, constraint: Constraint) -> tuple[str | None, str | None]:
        """(grammar text, None), or (None, llguidance's one-line message)."""
        try:
            grammar = constraint.grammar()
        except ValueError as e:
            return None, _one_line(str(e))
        failed, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        return (None, _one_line(messages[0])) if failed else (grammar, None)

    def _locate(self, node: object, message: str, path: list[str], budget: list[int], *, schema: bool = True) -> list[str]:
        """The path to the deepest subschema under `node` that fails alone with the same `message`
        (llguidance's messages say what is wrong, not where); `schema`: whether `node` is a schema
        (else a list or a name -> schema map of them). At most `budget[0]` compiles in all."""
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            if schema and key in _DATA_KEYWORDS or not isinstance(child, (dict, list)) or budget[0] <= 0:
                continue
            is_schema = isinstance(child, dict) and not (schema and key in _SCHEMA_MAPS)
            if is_schema:
                budget[0] -= 1
                if self._compile(Constraint("json_schema", json.dumps(child)))[1] != message:
                    continue
            found = self._locate(child, message, path + [str(key)], budget, schema=is_schema)
            if is_schema or len(found) > len(path) + 1:     # a list or map itself is not where it fails
                return found
        return path

    def guide(self, constraint: Constraint) -> Guide:
        matcher = llg.LLMatcher(self.tokenizer, self.check(constraint), log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"the {_NAMES[constraint.kind]} does not compile: {_one_line(matcher.get_error())}")
        return Guide(matcher, self.vocab_size, self.token_bytes)


def _one_line(message: str) -> str:
    """llguidance's message without its source excerpt and caret lines (the position is in its first line)."""
    lines = [x.strip() for x in message.splitlines()]
    return " ".join(x for x in lines if x and set(x) != {"^"} and not re.match(r"\d+ \|", x))


class Guide:
    """One generation's place in the grammar: the mask before each draw, the drawn token after it.

    Only chosen tokens are consumed, one at a time, so a prompt-lookup draft is checked row by row
    against the state its accepted prefix leads to, and a rejected draft token never enters the
    parser (nothing to roll back)."""

    def __init__(self, matcher: llg.LLMatcher, vocab_size: int, token_bytes: Callable[[], frozenset[int]] | None = None):
        self.matcher = matcher
        self.token_bytes = token_bytes      # () -> the byte values the vocabulary's tokens hold (Grammars.token_bytes)
        self.bits = np.zeros((vocab_size + 31) // 32, np.int32)    # one bit per token id
        self.masked = np.empty(vocab_size, np.float32)             # reused: a fresh array costs more than the mask
        self.consumed = 0
        self.complete_at: int | None = None     # tokens consumed when the grammar could take no more

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` with every token the grammar forbids next set to -inf: an array of the guide's own,
        valid until the next call (the input is not modified)."""
        self.compute_bits()
        return self.apply_bits(logits)

    def compute_bits(self) -> None:
        """llguidance's step: which tokens may come next, one bit each, into self.bits."""
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)

    def apply_bits(self, logits: np.ndarray) -> np.ndarray:
        allowed = np.unpackbits(self.bits.view(np.uint8), count=len(logits), bitorder="little").view(bool)
        out = self.masked[:len(logits)]
        out.fill(-np.inf)
        np.copyto(out, logits, where=allowed)
        return out

    def allows(self, token: int) -> bool:
        """Whether the parser takes `token` now. The mask can be wider: llguidance reads every added
        token as special, yet may allow one whose text the grammar forces (seen with Qwen's
        <tool_call>); consuming it would put the matcher in its error state for good."""
        return self.matcher.validate_tokens([token]) == 1

    def refused(self, token: int) -> ConstraintError:
        forced = self.matcher.compute_ff_bytes()
        missing = sorted(set(forced) - self.token_bytes()) if forced and self.token_bytes else []
        if missing:     # the grammar demands bytes no token holds: llguidance's mask then offers a wrong one
            return ConstraintError(f"the grammar forces the bytes {forced.hex(' ')} ({forced.decode('utf-8', 'replace')!r}) "
                                   f"next, and no token of this model's vocabulary holds "
                                   f"{', '.join(f'0x{b:02x}' for b in missing)}: the model cannot write that text "
                                   f"(a key, const or enum value with a character its vocabulary lacks)")
        return ConstraintError(f"every token the grammar's mask allows next (the last tried: {token}) is refused by its "
                               f"parser, so the reply cannot go on; seen with an added token whose text the grammar "
                               f"forces (write it as <[{token}]> in a Lark grammar)")

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}, which its own mask allowed: "
                               f"{self.matcher.get_error()}")
        self.consumed += 1
        if self.complete_at is None and self.matcher.is_stopped():
            self.complete_at = self.consumed

    def valid_prefix(self, draft: list[int]) -> int:
        """How many of `draft`'s tokens the grammar takes from here (drafts past that are not run)."""
        return self.matcher.validate_tokens(draft) if draft else 0

    @property
    def accepting(self) -> bool:
        return self.matcher.is_accepting()
