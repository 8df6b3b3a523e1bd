"""response_format, tools and /metrics against the official `openai` client, on a real uvicorn on
127.0.0.1. The model is the tiny random one: whatever it prefers, the grammar makes the reply parse."""
from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from slm.runtime import Engine
from slm.runtime.serve import BackgroundServer, create_app
from tests.test_serve import MODEL, client, engine, server  # noqa: F401 - the same real server fixtures



class Person(BaseModel):
    name: Literal["Ann", "Bob", "Cleo"]
    age: int = Field(ge=0, le=120)
    tags: list[Literal["a", "b", "c"]] = Field(max_length=3)
    admin: bool


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                                       "properties": {"zone": {"type": "string", "maxLength": 6}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]




def _calls(reply) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in reply.choices[0].message.tool_calls or ()]


# --- response_format -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parse_returns_a_pydantic_object(client, seed):
    reply = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "A person, please."}],
                                          response_format=Person, temperature=1.0, seed=seed, max_tokens=120)
    person = reply.choices[0].message.parsed
    assert isinstance(person, Person) and reply.choices[0].finish_reason == "stop"
    assert Person.model_validate_json(reply.choices[0].message.content) == person


def test_json_object_streamed_is_the_whole_reply(client):
    schema = {"type": "object", "required": ["ok"], "additionalProperties": False,
              "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "flag", "schema": schema, "strict": True}}
    whole = client.chat.completions.create(model=MODEL, messages=ASK, response_format=fmt, temperature=0, max_tokens=60)
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, response_format=fmt, temperature=0,
                                                 max_tokens=60, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    jsonschema.validate(json.loads(text), schema)


def test_json_object_mode_gives_an_object_or_says_length(client):
    for seed in range(4):
        reply = client.chat.completions.create(model=MODEL, messages=ASK, response_format={"type": "json_object"},
                                               temperature=1.0, seed=seed, max_tokens=40)
        choice = reply.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:   # a random model may write a long string: cut, and said so
            assert choice.finish_reason == "length"
            assert choice.message.content.startswith("{")


def test_completions_take_response_format_through_extra_body(client):
    """/v1/completions (raw text, no template) takes response_format too, as vLLM's extension: the
    openai client sends it in extra_body; streamed or not the text is the JSON."""
    schema = {"type": "object", "required": ["city", "n"], "additionalProperties": False,
              "properties": {"city": {"enum": ["Paris", "Oslo"]}, "n": {"type": "integer", "minimum": 0, "maximum": 99}}}
    fmt = {"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}}
    kw = dict(model=MODEL, prompt="The answer as JSON:", max_tokens=40, temperature=1.0, seed=3)
    plain = client.completions.create(**kw)
    with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):     # the control: a random model
        jsonschema.validate(json.loads(plain.choices[0].text), schema)
    whole = client.completions.create(**kw, extra_body=fmt)
    assert whole.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(whole.choices[0].text), schema)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, extra_body=fmt, stream=True)
                       if c.choices)
    assert streamed == whole.choices[0].text
    obj = client.completions.create(**kw, extra_body={"response_format": {"type": "json_object"}})
    assert obj.choices[0].finish_reason == "length" or isinstance(json.loads(obj.choices[0].text), dict)


@pytest.mark.parametrize("fmt,param,says", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
     "response_format.json_schema.schema", "Invalid type: strin"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"uniqueItems": True}}},
     "response_format.json_schema.schema", "keyword 'uniqueItems' cannot be enforced"),
    ({"type": "json_schema"}, "response_format.json_schema", "needs json_schema"),
    ({"type": "yaml"}, "response_format.type", "'yaml'"),
])
def test_completions_bad_response_format_is_400_naming_it(client, fmt, param, says):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body={"response_format": fmt})
    error = caught.value.body
    assert error["param"] == param and says in error["message"], error


def test_completions_response_format_cut_by_max_tokens_is_length(client):
    reply = client.completions.create(model=MODEL, prompt="x", max_tokens=3, temperature=0, extra_body={
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {
            "type": "object", "required": ["a", "b"], "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}}}})
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].text.startswith("{")


# --- tools -----------------------------------------------------------------------------------------
def test_tool_choice_auto_without_tools_is_plain_chat(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tool_choice="auto", tools=[], temperature=0,
                                           max_tokens=8)
    plain = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=8)
    assert reply.choices[0].message.content == plain.choices[0].message.content


def test_two_turn_tool_round_trip(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                           temperature=0, max_tokens=120)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        spec = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
        jsonschema.validate(json.loads(call.function.arguments), spec["function"]["parameters"])
    messages = ASK + [choice.message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'} for call in choice.message.tool_calls]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice="none",
                                            temperature=0, max_tokens=16)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content and second.choices[0].finish_reason in ("stop", "length")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens      # the call and its result were read


class Place(BaseModel):
    city: Literal["Paris", "Oslo", "Lima"]


class Trip(BaseModel):
    start: Place            # a nested model: the parameters schema refers to #/$defs/Place
    end: Place


def test_parse_with_a_pydantic_tool_gives_parsed_arguments(client):
    reply = client.chat.completions.parse(model=MODEL, messages=ASK, tools=[openai.pydantic_function_tool(Trip)],
                                          tool_choice="required", parallel_tool_calls=False,
                                          temperature=1.0, seed=2, max_tokens=80)
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "Trip" and isinstance(call.function.parsed_arguments, Trip)


def test_named_tool_choice_calls_that_function_once(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], temperature=1.0, seed=4,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}},
                                           max_tokens=80)
    [(name, arguments)] = _calls(reply)
    assert name == "get_time" and set(arguments) == {"zone"} and len(arguments["zone"]) <= 6


def test_streamed_tool_calls_are_deltas_of_the_same_calls(client):
    kw = dict(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=80)
    whole = client.chat.completions.create(**kw)
    chunks = [c for c in client.chat.completions.create(**kw, stream=True) if c.choices]
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == _calls(whole)
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


def test_auto_with_the_stream_helper_accumulates_calls_or_text(client):
    """tool_choice auto: the reply is text or calls; the client's own stream helper puts either together."""
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[WEATHER], temperature=1.0, seed=9,
                                        max_tokens=60) as stream:
        try:
            final = stream.get_final_completion()
        except openai.LengthFinishReasonError as e:   # text (or a call) cut at max_tokens
            final = e.completion
    message = final.choices[0].message
    if final.choices[0].finish_reason == "tool_calls":
        assert message.tool_calls and not message.content
        jsonschema.validate(json.loads(message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])
    else:
        assert not message.tool_calls and not (message.content or "").startswith("<tool_call>")


def test_a_tool_call_cut_by_max_tokens_is_length_and_not_a_call(client):
    for stream in (False, True):
        response = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                                  temperature=0, max_tokens=6, stream=stream)
        if stream:
            chunks = [c for c in response if c.choices]
            assert not any(c.choices[0].delta.tool_calls for c in chunks)
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            assert response.choices[0].message.tool_calls is None
            text, finish = response.choices[0].message.content, response.choices[0].finish_reason
        assert finish == "length" and text.startswith("<tool_call>")


def test_tool_prompt_follows_the_template(engine):
    """SmolLM2's template has no tool format: the Qwen/Hermes convention goes in as a system message and
    tool results as <tool_response> user turns; a template that renders `tools` gets them itself."""
    from slm.runtime.serve.schemas import ChatCompletionRequest
    from slm.runtime.serve.tools import ToolPlan
    body = ChatCompletionRequest.model_validate({"messages": ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"}], "tools": [WEATHER]})
    plan = ToolPlan.of(body, engine.manifest.chat_template)
    assert plan.template_tools is None and "<tools>\n" + json.dumps(WEATHER) in plan.messages[0]["content"]
    assert plan.messages[2]["content"] == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
                                           '"unit": "celsius"}}\n</tool_call>')
    assert plan.messages[3] == {"role": "user", "content": "<tool_response>\n21\n</tool_response>"}
    native = ToolPlan.of(body, "{% for t in tools %}{{ t | tojson }}{% endfor %}")
    assert native.template_tools == [WEATHER] and native.messages[0] == ASK[0]
    assert native.messages[1]["tool_calls"] == [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]
    assert native.messages[2] == {"role": "tool", "content": "21"}


# --- bad input ---------------------------------------------------------------------------------------
def _fmt(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.mark.parametrize("extra,param,says", [
    ({"response_format": _fmt({"not": {"type": "string"}})}, "response_format.json_schema.schema",
     "keyword 'not' cannot be enforced"),
    ({"response_format": _fmt({"type": "object", "properties": {"a": {"type": "strin"}}})},
     "response_format.json_schema.schema", "does not compile at #/properties/a: Invalid type: strin"),
    ({"response_format": _fmt({"anyOf": [{"type": "null"}, {"type": "array", "items": {"pattern": "(a"}}]}),
      "tools": [WEATHER]}, "response_format.json_schema.schema", "at #/anyOf/1/items: regex parse error"),
    ({"response_format": _fmt({"type": "string", "pattern": "(a"})}, "response_format.json_schema.schema",
     "unclosed group"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "needs json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "'xml'"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "array", "uniqueItems": True}}}]}, "tools.1.function.parameters", "keyword 'uniqueItems'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "when": {"type": "object", "properties": {"day": {"not": {"const": 0}}}}}}}}]},
     "tools.0.function.parameters", "keyword 'not' cannot be enforced while decoding at #/properties/when/properties/day"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "'nope', which is not in tools"),
    ({"tool_choice": "required"}, "tool_choice", "needs at least one function"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "the same function twice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name", "pattern"),
])
def test_bad_constraints_are_400_naming_the_field(client, extra, param, says):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, extra_body=extra)
    error = caught.value.body
    assert error["param"] == param and says in error["message"], error


schema_leaves = st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "null", "object",
                                                       "array", "strin")] +
                                [{"enum": [1, "a", None]}, {"const": 3}, {"pattern": "[a-"}, {"$ref": "#/x"},
                                 {"format": "email"}, {"maxLength": -1}, {"minimum": "x"}, {}, {"not": {}}])
json_junk = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                     max_size=3), max_leaves=6)
schemas = st.recursive(
    schema_leaves,
    lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=6), inner,
                                                                                         max_size=3)},
                              optional={"required": st.lists(st.text(max_size=6), max_size=3),
                                        "additionalProperties": st.booleans() | inner}),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                              optional={"minItems": st.integers(-1, 3), "maxItems": st.integers(-1, 3)}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"oneOf": st.lists(inner, max_size=2)}),
        st.dictionaries(st.sampled_from(["type", "items", "properties", "allOf", "if", "$defs", "minLength"]),
                        json_junk | inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                HealthCheck.function_scoped_fixture])
@given(schema=schemas, as_tool=st.booleans(), stream=st.booleans(),
       choice=st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]))
def test_fuzzed_schemas_never_crash_the_server(server, schema, as_tool, stream, choice):
    extra = ({"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
              "tool_choice": choice} if as_tool else {"response_format": _fmt(schema)})
    body = {"model": MODEL, "messages": ASK, "max_tokens": 8, "temperature": 1.0, "seed": 0, "stream": stream, **extra}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, trust_env=False, timeout=60)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["param"].startswith("tools" if as_tool else "response_format")
    elif stream and '"error"' in r.text:
        # a grammar that cannot go on mid-stream (e.g. a required key with a character the vocabulary has no
        # bytes for): the same error, as a 400, that the request gets unstreamed, naming the constraint
        error = json.loads(r.text.rstrip().rsplit("data: ", 1)[1])["error"]
        assert error["type"] == "invalid_request_error", error
        assert error["param"].startswith("tools" if as_tool else "response_format"), error
        again = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": False}, trust_env=False, timeout=60)
        assert again.status_code == 400 and again.json()["error"]["message"] == error["message"], again.text
    elif stream:
        assert r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
    else:
        finish = r.json()["choices"][0]["finish_reason"]
        assert finish in ("stop", "length", "tool_calls")
        if finish == "stop" and not as_tool and _valid_schema(schema):   # llguidance takes some invalid ones
            jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)


def test_a_required_key_the_vocabulary_cannot_write_is_a_400_streamed_or_not(server):
    """Found by the fuzz above: SmolLM2's vocabulary has no token holding byte 0xF1, so a required key
    U+40000 cannot be written; llguidance's mask then offers a wrong byte token. Unstreamed: a 400 naming
    the bytes; streamed (after a first chunk went out): the same error as the stream's last event."""
    schema = {"type": "object", "properties": {}, "required": ["\U00040000"]}
    body = {"model": MODEL, "messages": ASK, "max_tokens": 8, "temperature": 1.0, "seed": 0,
            "response_format": _fmt(schema)}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, trust_env=False, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"].startswith("response_format") and "f1 80 80 80" in error["message"]
    assert "no token of this model's vocabulary holds 0xf1" in error["message"]
    streamed = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": True}, trust_env=False, timeout=60)
    last = json.loads(streamed.text.rstrip().rsplit("data: ", 1)[1])
    assert last["error"] == {**error, "type": "invalid_request_error"}


def _valid_schema(schema) -> bool:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError:
        return False
    return True


# --- /metrics --------------------------------------------------------------------------------------
def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"{url}/metrics", trust_env=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_requests_tokens_latency_and_evictions(tiny_package):
    engine = Engine(tiny_package, kv_budget=48, kv_policy="streaming")
    with BackgroundServer(create_app(engine, model_id=MODEL)) as server, \
            BackgroundServer(create_app(engine, model_id=MODEL)) as other:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                               http_client=httpx.Client(trust_env=False))
        usages = [client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=n, temperature=0).usage
                  for n in (5, 30)]
        chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=7, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        usages.append(chunks[-1].usage)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=-1)
        m = _scrape(server.url)
        chat = "/v1/chat/completions"
        assert m[("slm_requests_total", (("endpoint", chat), ("status", "200")))] == 3
        assert m[("slm_requests_total", (("endpoint", chat), ("status", "400")))] == 1
        completion = sum(u.completion_tokens for u in usages)
        assert m[("slm_completion_tokens_total", ())] == completion
        assert m[("slm_prompt_tokens_total", ())] == 3 * usages[0].prompt_tokens
        assert m[("slm_time_to_first_token_seconds_count", ())] == 3
        assert m[("slm_time_per_output_token_seconds_count", ())] == completion - 3
        assert m[("slm_queue_depth", ())] == 0 and m[("slm_slots_busy", ())] == 0
        assert m[("slm_kv_evicted_tokens_total", ())] > 0       # 30 tokens after the prompt overflow 48 slots
        assert ("slm_requests_total", (("endpoint", chat), ("status", "200"))) not in _scrape(other.url)


# --- Qwen2.5-Coder's own tool format (when its package is on this machine) -------------------------
QWEN = __import__("pathlib").Path.home() / ".cache/slm/packages/qwen2.5-coder-1.5b"
needs_qwen = pytest.mark.skipif(not (QWEN / "manifest.json").is_file(), reason="no Qwen2.5-Coder package here")


@needs_qwen
def test_qwen_template_renders_the_calls_the_grammar_writes():
    """The call text our grammar makes is exactly what Qwen's template writes for an earlier call."""
    from slm.runtime.chat_template import compile_template
    from slm.runtime.serve.schemas import ChatCompletionRequest
    from slm.runtime.serve.tools import ToolPlan
    from slm.core.package import read_manifest
    m = read_manifest(QWEN)
    body = ChatCompletionRequest.model_validate({"messages": ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"}], "tools": [WEATHER]})
    plan = ToolPlan.of(body, m.chat_template)
    assert plan.template_tools == [WEATHER]
    prompt = compile_template(m.chat_template).render(plan.messages, bos_token=m.bos_token, eos_token=m.eos_token,
                                                      extra={"tools": plan.template_tools})
    assert "# Tools" in prompt and json.dumps(WEATHER) in prompt
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"unit": "celsius"}}\n</tool_call><|im_end|>') in prompt
    assert "<|im_start|>user\n<tool_response>\n21\n</tool_response><|im_end|>" in prompt


@needs_qwen
def test_qwen_tool_round_trip():
    engine = Engine(QWEN, kv_budget=1024)
    with BackgroundServer(create_app(engine, model_id="qwen", max_concurrent=1)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600,
                               http_client=httpx.Client(trust_env=False))
        first = client.chat.completions.create(model="qwen", messages=ASK, tools=[WEATHER], tool_choice="required",
                                               temperature=0, max_tokens=60)
        [call] = first.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and first.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        messages = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21}'}]
        second = client.chat.completions.create(model="qwen", messages=messages, tools=[WEATHER], temperature=0,
                                                max_tokens=40)
        assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert second.choices[0].message.content or second.choices[0].message.tool_calls
