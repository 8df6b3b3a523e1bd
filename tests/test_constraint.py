"""Constrained generation on a real (tiny, random) package: whatever the model prefers, the reply is
in the constraint's language, under every sampler, prompt lookup, stop strings and KV policy."""
from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from slm.runtime import Engine, SamplingParams
from slm.runtime.constraint import Constraint, ConstraintError

# bounded everywhere, so that a random model finishes well inside max_tokens
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                         "ok": {"type": "boolean"}}}
SAMPLERS = [SamplingParams(temperature=0.0),
            SamplingParams(temperature=1.0, seed=1),
            SamplingParams(temperature=1.5, top_k=20, seed=2),
            SamplingParams(temperature=0.9, top_p=0.8, min_p=0.05, seed=3),
            SamplingParams(temperature=0.7, repetition_penalty=1.3, seed=4)]


@pytest.fixture(scope="module")
def engine(tiny_package):
    return Engine(tiny_package, threads=1)


def _text(events) -> str:
    return "".join(e.text for e in events)


def _run(engine, constraint, *, params=SamplingParams(), max_tokens=80, prompt="Describe a person.", **kw):
    events = list(engine.generate(prompt, params=params, max_tokens=max_tokens, constraint=constraint,
                                  cache=engine.new_cache(), **kw))
    return _text(events), events


@pytest.mark.parametrize("params", SAMPLERS, ids=lambda p: f"t{p.temperature}-k{p.top_k}-p{p.top_p}-r{p.repetition_penalty}")
def test_json_schema_reply_validates_under_every_sampler(engine, params):
    text, events = _run(engine, Constraint.json_schema(PERSON), params=params, max_tokens=120)
    assert events[-1].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), PERSON)


def test_unconstrained_random_model_is_not_json(engine):
    """The control for the test above: without the mask this model does not write the schema."""
    text, _ = _run(engine, None, max_tokens=40)
    with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(text), PERSON)


def test_regex_is_matched_whole_and_ends_where_the_regex_does(engine):
    for seed in range(3):
        text, events = _run(engine, Constraint.regex(r"[0-9]{3}-[a-z]{2,4}"),
                            params=SamplingParams(temperature=1.0, seed=seed))
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", text), text
        assert events[-1].finish_reason == "stop"
        assert all(e.token not in engine.eos_ids for e in events[:-1])


def test_end_of_sequence_only_where_the_grammar_accepts(engine):
    """A model that wants to stop at once (EOS at every step) still has to finish the regex."""
    eos = next(iter(engine.eos_ids))

    class EosFirst(Engine):
        def decode_step(self, cache, token, eviction=None):
            logits = super().decode_step(cache, token, eviction).copy()
            logits[eos] = 1e4
            return logits

        def prefill(self, *a, **k):
            logits = super().prefill(*a, **k).copy()
            logits[eos] = 1e4
            return logits

    eager = EosFirst(engine.path, threads=1)
    assert _run(eager, None)[1][0].token == eos             # unconstrained it stops at once
    text, events = _run(eager, Constraint.regex(r"(yes|no)( [a-z]+)*"))
    assert re.fullmatch(r"(yes|no)( [a-z]+)*", text) and text in ("yes", "no")
    assert events[-1].token == eos and events[-1].finish_reason == "stop"


def test_lark_grammar(engine):
    grammar = r"""
start: "(" atom (" " atom)? ")"
atom: NUMBER | WORD | start
NUMBER: /[0-9]{1,2}/
WORD: /[a-z]{1,5}/
"""
    atom = r"([0-9]{1,2}|[a-z]{1,5}|\(.*\))"
    for seed in range(3):
        text, events = _run(engine, Constraint.lark(grammar), params=SamplingParams(temperature=1.0, seed=seed),
                            max_tokens=200)
        assert events[-1].finish_reason == "stop" and re.fullmatch(rf"\({atom}( {atom})?\)", text), text
        assert text.count("(") == text.count(")")


def test_max_tokens_cuts_a_constrained_reply_as_length(engine):
    text, events = _run(engine, Constraint.json_schema(PERSON), max_tokens=4)
    assert events[-1].finish_reason == "length" and len(events) == 4
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_stop_string_still_ends_a_constrained_reply(engine):
    full, _ = _run(engine, Constraint.regex(r"[a-z]{4};[a-z]{4}"))
    assert full[4] == ";"
    cut, events = _run(engine, Constraint.regex(r"[a-z]{4};[a-z]{4}"), stop=[";"])
    assert cut == full[:4] and events[-1].finish_reason == "stop"


def test_a_complete_grammar_flushes_what_a_stop_string_held_back(engine):
    """';' could begin the stop string ';x', so it is held; the grammar ends there, and so must the text."""
    text, events = _run(engine, Constraint.regex(r"[a-z]{4};"), stop=[";x"])
    assert re.fullmatch(r"[a-z]{4};", text) and events[-1].finish_reason == "stop", text


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=5)],
                         ids=["greedy", "sampled"])
def test_prompt_lookup_under_a_constraint(tiny_package, params, monkeypatch):
    """Greedy: the same tokens as plain decoding; sampled: still valid. Drafts go through the mask:
    the prompt's "four five" after "one two three four" is drafted and cut where the enum ends."""
    from slm.runtime.constraint import Guide
    schema = {"type": "array", "items": {"enum": ["one two three", "four five", "one two three four"]},
              "minItems": 6, "maxItems": 6}
    checked = []            # (drafted, taken by the grammar)
    valid_prefix = Guide.valid_prefix
    monkeypatch.setattr(Guide, "valid_prefix", lambda self, draft: checked.append(
        (len(draft), valid_prefix(self, draft))) or checked[-1][1])
    runs = {}
    for lookup in (0, 4):
        engine = Engine(tiny_package, threads=1, lookup=lookup)
        text, events = _run(engine, Constraint.json_schema(schema), params=params, max_tokens=200,
                            prompt="one two three four five one two three four five one two three")
        jsonschema.validate(json.loads(text), schema)
        runs[lookup] = [e.token for e in events]
    assert any(taken < drafted for drafted, taken in checked), checked     # a draft the grammar cut short
    if params.greedy:
        assert runs[4] == runs[0]


@pytest.mark.parametrize("kv_dtype", ["fp32", "fp16", "int8", "int4"])
@pytest.mark.parametrize("policy", ["streaming", "knorm", "h2o", "tova", "snapkv", "namm"])
def test_constraint_holds_while_the_cache_evicts(tiny_package, tiny_namm_package, policy, kv_dtype):
    """Every policy at every KV dtype, the budget overflowing; the policies that allow prompt lookup
    (streaming, knorm) draft as well."""
    budget = 64
    engine = Engine(tiny_namm_package if policy == "namm" else tiny_package, threads=1, kv_policy=policy,
                    kv_budget=budget, kv_dtype=kv_dtype, lookup=4 if policy in ("streaming", "knorm") else 0)
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 30,
              "maxItems": 30}
    text, events = _run(engine, Constraint.json_schema(schema), max_tokens=200, prompt="Count " * 30)
    assert events[-1].kv.evicted_tokens > 0
    assert max(e.kv.cached_tokens for e in events) <= budget
    jsonschema.validate(json.loads(text), schema)


def test_unconstrained_generation_is_unchanged_by_the_new_argument(engine):
    a = [e.token for e in engine.generate("Hi", max_tokens=12, cache=engine.new_cache())]
    b = [e.token for e in engine.generate("Hi", max_tokens=12, cache=engine.new_cache(), constraint=None)]
    assert a == b


def test_mask_forbids_exactly_what_the_grammar_forbids(engine):
    guide = engine.grammars().guide(Constraint.regex("(ab|cd)e"))
    logits = np.zeros(engine.manifest.dims.vocab_size, np.float32)
    allowed = np.flatnonzero(np.isfinite(guide.mask(logits)))
    texts = {engine.tokenizer.decode([int(t)]) for t in allowed}
    assert texts and all(t in ("a", "ab", "c", "cd", "abe", "cde") for t in texts), texts


@pytest.mark.parametrize("constraint,match", [
    (lambda: Constraint.json_schema({"type": "strin"}), r"Invalid type: strin"),
    (lambda: Constraint.json_schema({"type": "object", "properties": {"a": {"$ref": "#/nope"}}}), r"/nope"),
    (lambda: Constraint.json_schema({"type": "string", "pattern": "[a-"}), r"unclosed character class"),
    (lambda: Constraint.json_schema('{"type": '), r"not valid JSON"),
    (lambda: Constraint.json_schema([1, 2]), r"not a JSON list"),
    (lambda: Constraint.regex("(abc"), r"unclosed group"),
    (lambda: Constraint.lark("start: foo"), r'unknown name: "foo"'),
    (lambda: Constraint.lark('start: "a" ('), r"1\(13\)"),
    (lambda: Constraint("ebnf", "x"), r"kind 'ebnf' is unknown; use one of json_schema, regex, lark"),
    (lambda: Constraint.regex(""), r"empty"),
])
def test_bad_constraints_name_what_is_wrong(engine, constraint, match):
    with pytest.raises(ConstraintError, match=match):
        list(engine.generate("Hi", max_tokens=4, constraint=constraint()))


@pytest.mark.parametrize("keyword,schema", [("not", {"not": {"type": "string"}}),
                                            ("uniqueItems", {"type": "array", "uniqueItems": True}),
                                            ("dependentRequired", {"dependentRequired": {"a": ["b"]}})])
def test_unenforceable_keyword_is_named(engine, keyword, schema):
    with pytest.raises(ConstraintError, match=f"keyword '{keyword}' cannot be enforced") as e:
        engine.grammars().check(Constraint.json_schema(schema))
    assert e.value.keyword == keyword


@pytest.mark.parametrize("schema,where", [
    ({"type": "object", "properties": {"a": {"type": "object", "properties": {"b/c": {"type": "strin"}}}}},
     "#/properties/a/properties/b~1c: Invalid type: strin"),
    ({"anyOf": [{"type": "string"}, {"type": "array", "prefixItems": [{"type": "null"}, {"minimum": "x"}]}]},
     "#/anyOf/1/prefixItems/1: Expected f64 for 'minimum'"),
    ({"$defs": {"P": {"type": "intger"}}, "properties": {"p": {"$ref": "#/$defs/P"}}}, "#/$defs/P: Invalid type"),
    ({"properties": {"enum": {"type": "string", "pattern": "[a-"}}}, "#/properties/enum: regex parse error"),
    ({"type": "strin"}, "#: Invalid type: strin"),
])
def test_a_bad_schema_error_points_at_the_failing_subschema(engine, schema, where):
    with pytest.raises(ConstraintError, match="does not compile at " + re.escape(where)):
        engine.grammars().check(Constraint.json_schema(schema))


def test_padded_vocabulary_never_allows_ids_past_the_tokenizer(engine):
    """The logits may be wider than the tokenizer (a padded embedding table)."""
    from slm.runtime.constraint import Grammars
    text = (engine.path / engine.manifest.tokenizer_file).read_text()
    n = engine.tokenizer.get_vocab_size()
    grammars = Grammars(text, vocab_size=n + 300, eos_ids=[2])
    guide = grammars.guide(Constraint.regex("(?s:.{1,20})"))
    masked = guide.mask(np.zeros(n + 300, np.float32))
    assert np.isfinite(masked[:n]).sum() > 1000 and not np.isfinite(masked[n:]).any()


# --- slm generate --json-schema / --regex / --grammar --------------------------------------------
def _slm(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "slm.cli", *args], capture_output=True, text=True, timeout=180)


def test_cli_json_schema_regex_and_grammar(tiny_package, tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    out = _slm("generate", "A person", "--model", str(tiny_package), "--threads", "1", "--max-tokens", "120",
               "--json-schema", str(schema), "--temperature", "1", "--seed", "3")
    assert out.returncode == 0, out.stderr
    jsonschema.validate(json.loads(out.stdout), PERSON)
    out = _slm("generate", "A date", "--model", str(tiny_package), "--threads", "1", "--regex", r"20[0-9]{2}-[01][0-9]")
    assert out.returncode == 0 and re.fullmatch(r"20[0-9]{2}-[01][0-9]\n", out.stdout), out
    grammar = tmp_path / "pair.lark"
    grammar.write_text('start: "(" WORD ", " WORD ")"\nWORD: /[a-z]{1,4}/\n')
    out = _slm("generate", "A pair", "--model", str(tiny_package), "--threads", "1", "--grammar", str(grammar))
    assert out.returncode == 0 and re.fullmatch(r"\([a-z]{1,4}, [a-z]{1,4}\)\n", out.stdout), out


@pytest.mark.parametrize("flag,content,message", [
    ("--grammar", "start: foo\n", 'unknown name: "foo"'),
    ("--json-schema", '{"not": {}}', "keyword 'not' cannot be enforced"),
    ("--json-schema", "{oops", "not valid JSON"),
    ("--json-schema", None, "cannot be read"),
])
def test_cli_bad_constraint_is_one_line_exit_2(tiny_package, tmp_path, flag, content, message):
    path = tmp_path / "c.txt"
    if content is not None:
        path.write_text(content)
    out = _slm("generate", "Hi", "--model", str(tiny_package), "--threads", "1", flag, str(path))
    assert out.returncode == 2 and out.stdout == "", out
    error = out.stderr.splitlines()[-1]
    assert error.startswith("error: ") and message in error and "Traceback" not in out.stderr
