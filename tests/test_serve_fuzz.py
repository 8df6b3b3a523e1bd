"""Property-based fuzz of the generation endpoints: whatever the body, the answer is a 2xx with a
well-formed result or a 4xx in OpenAI's error format, never a 5xx, and the server keeps serving.

Three layers of input: arbitrary bytes, arbitrary JSON, and near-valid requests where each field is
either a plausible value or arbitrary JSON (where the interesting bugs live). A 64-token KV budget
bounds every generation, so each example costs milliseconds.
"""
from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from slm.runtime import Engine
from slm.runtime.serve import BackgroundServer, create_app

MODEL = "tiny-llama"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, sometimes anything."""
    return st.one_of(valid, valid, valid, json_values)


text = st.text(max_size=40)
messages = st.lists(st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["system", "developer", "user", "assistant", "tool", ""])),
     "content": maybe(text | st.lists(st.fixed_dictionaries({"type": maybe(st.just("text")), "text": maybe(text)}),
                                      max_size=2))},
    optional={"name": text}), max_size=3)
sampling = {
    "model": maybe(st.sampled_from([MODEL, "gpt-4o", ""])),
    "max_tokens": maybe(st.integers(-2, 8) | st.integers(60, 2**40)),
    "temperature": maybe(st.floats(-1, 3)),
    "top_p": maybe(st.floats(-0.5, 1.5)),
    "top_k": maybe(st.integers(-3, 100)),
    "min_p": maybe(st.floats(-0.5, 1.5)),
    "repetition_penalty": maybe(st.floats(-1, 3)),
    "seed": maybe(st.integers(-5, 2**70)),
    "stop": maybe(text | st.lists(text, max_size=5)),
    "stream": maybe(st.booleans()),
    "stream_options": maybe(st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
    "n": maybe(st.integers(0, 3)),
    "logprobs": maybe(st.booleans()),
}
small_schemas = maybe(st.sampled_from([{"type": "object"}, {"type": "integer", "minimum": 0, "maximum": 9},
                                     {"enum": ["a", "b"]}, {"type": "strin"}, {"not": {}}, {}]))
response_formats = maybe(st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["text", "json_object", "json_schema", "xml"]))},
    optional={"json_schema": maybe(st.fixed_dictionaries({"name": maybe(text)},
                                                         optional={"schema": small_schemas, "strict": maybe(st.booleans())}))}))
tools = maybe(st.lists(st.fixed_dictionaries(
    {"type": maybe(st.just("function")),
     "function": maybe(st.fixed_dictionaries({"name": maybe(st.sampled_from(["f", "g", "bad name"]))},
                                             optional={"parameters": small_schemas}))}), max_size=2))
tool_choices = maybe(st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]))
chat_bodies = st.fixed_dictionaries({"messages": maybe(messages)},
                                    optional={**sampling, "max_completion_tokens": sampling["max_tokens"],
                                              "response_format": response_formats, "tools": tools,
                                              "tool_choice": tool_choices, "parallel_tool_calls": maybe(st.booleans())})
completion_bodies = st.fixed_dictionaries({"prompt": maybe(text | st.lists(text, max_size=2))},
                                          optional={**sampling, "echo": maybe(st.booleans()),
                                                    "response_format": response_formats})


@pytest.fixture(scope="module")
def http(tiny_package):
    app = create_app(Engine(tiny_package, kv_budget=64), model_id=MODEL, max_concurrent=2, max_queue=4)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, trust_env=False, timeout=60) as client:
        yield client
        assert client.get("/health").json()["slots"] == {"total": 2, "idle": 2}


def check(response: httpx.Response) -> None:
    event(f"HTTP {response.status_code}")      # see --hypothesis-show-statistics
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", response.text[-300:]
        for data in events[:-1]:
            assert "error" not in json.loads(data), data
    else:
        body = response.json()
        assert body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
        assert body["usage"]["completion_tokens"] >= 1


@FUZZ
@given(body=st.binary(max_size=200), endpoint=st.sampled_from(ENDPOINTS))
def test_any_bytes(http, body, endpoint):
    check(http.post(endpoint, content=body))


@FUZZ
@given(body=json_values, endpoint=st.sampled_from(ENDPOINTS))
def test_any_json(http, body, endpoint):
    check(http.post(endpoint, content=json.dumps(body)))


@settings(FUZZ, max_examples=150)
@given(body=chat_bodies)
def test_near_valid_chat_requests(http, body):
    check(http.post("/v1/chat/completions", content=json.dumps(body)))


@settings(FUZZ, max_examples=100)
@given(body=completion_bodies)
def test_near_valid_completion_requests(http, body):
    check(http.post("/v1/completions", content=json.dumps(body)))


valid_text = st.text(min_size=1, max_size=30)
valid_sampling = {
    "model": st.just(MODEL),
    "max_tokens": st.integers(1, 8),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(0, 100),
    "min_p": st.floats(0, 1),
    "repetition_penalty": st.floats(0.5, 2),
    "seed": st.integers(0, 2**63),
    "stop": valid_text | st.lists(valid_text, max_size=4),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}
valid_chat_bodies = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
         "content": st.text(max_size=30) | st.lists(
             st.fixed_dictionaries({"type": st.just("text"), "text": valid_text}), max_size=2)}),
        min_size=1, max_size=2)},
    optional=valid_sampling)
valid_completion_bodies = st.fixed_dictionaries({"prompt": valid_text}, optional=valid_sampling)


def check_valid(response: httpx.Response) -> None:
    """A valid request is answered, unless its prompt does not fit the 64-token budget."""
    event(f"HTTP {response.status_code}")
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "context_length_exceeded", response.text
        return
    assert response.status_code == 200, response.text
    check(response)


@settings(FUZZ, max_examples=60)
@given(body=valid_chat_bodies)
def test_valid_chat_requests_are_answered(http, body):
    check_valid(http.post("/v1/chat/completions", json=body))


@settings(FUZZ, max_examples=60)
@given(body=valid_completion_bodies)
def test_valid_completion_requests_are_answered(http, body):
    check_valid(http.post("/v1/completions", json=body))
