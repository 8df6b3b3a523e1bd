"""Bad requests get a 4xx in OpenAI's error format with a message naming the problem, and the server
keeps serving. The engine has a 64-token KV budget, so an over-budget prompt is easy to write."""
from __future__ import annotations

import httpx
import openai
import pytest

from slm.runtime import Engine
from slm.runtime.serve import BackgroundServer, create_app

MODEL = "tiny-llama"
KEY = "test-key"
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tiny_package):
    app = create_app(Engine(tiny_package, kv_budget=64), model_id=MODEL, api_key=KEY)
    with BackgroundServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, trust_env=False,
                      timeout=30) as c:
        yield c


def post(http: httpx.Client, body: bytes | dict, path: str = "/v1/chat/completions") -> httpx.Response:
    if isinstance(body, dict):
        return http.post(path, json=body)
    return http.post(path, content=body, headers={"Content-Type": "application/json"})


def assert_error(response: httpx.Response, status: int, *, says: str, param: str | None = None,
                 code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert says in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


@pytest.fixture(autouse=True)
def still_serving(http):
    yield
    assert post(http, OK_CHAT).status_code == 200, "the server stopped serving after a bad request"


BAD_BODIES = [
    pytest.param(b'{"model": "tiny-llama", "messages": [', "not valid JSON", None, id="malformed-json"),
    pytest.param(b"", "body is empty", None, id="empty-body"),
    pytest.param(b'["messages"]', "send a JSON object", None, id="json-list"),
    pytest.param(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not valid UTF-8", None, id="latin-1-body"),
    pytest.param(b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "lone UTF-16 surrogate", None,
                 id="lone-surrogate"),
    pytest.param(b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "NaN is not a JSON number",
                 None, id="nan"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply", None, id="deep-nesting"),
]


@pytest.mark.parametrize("body, says, param", BAD_BODIES)
def test_bodies_that_are_not_json_objects(http, body, says, param):
    assert_error(post(http, body), 400, says=says, param=param)


WRONG_FIELDS = [
    pytest.param({"messages": "Hi"}, "messages='Hi'", "messages", id="messages-a-string"),
    pytest.param({"messages": []}, "at least 1 item", "messages", id="no-messages"),
    pytest.param({"messages": [{"role": "user", "content": 5}]}, "valid string or", "messages.0.content",
                 id="content-a-number"),
    pytest.param({"messages": [{"role": "robot", "content": "x"}]}, "'robot'", "messages.0.role", id="unknown-role"),
    pytest.param({"messages": [{"content": "x"}]}, "messages.0.role is required", "messages.0.role", id="no-role"),
    pytest.param({**OK_CHAT, "max_tokens": "5"}, "valid integer", "max_tokens", id="max-tokens-a-string"),
    pytest.param({**OK_CHAT, "max_tokens": 0}, "greater than or equal to 1", "max_tokens", id="max-tokens-0"),
    pytest.param({**OK_CHAT, "max_tokens": 10**9}, "use 1 <= max_tokens <= 64", "max_tokens", id="max-tokens-huge"),
    pytest.param({**OK_CHAT, "temperature": -1}, "temperature=-1.0 is out of range", "temperature", id="temp<0"),
    pytest.param({**OK_CHAT, "top_p": 0}, "0 < top_p <= 1", "top_p", id="top-p-0"),
    pytest.param({**OK_CHAT, "stream": "yes"}, "valid boolean", "stream", id="stream-a-string"),
    pytest.param({**OK_CHAT, "stop": [""]}, "at least 1 character", "stop.0", id="empty-stop"),
    pytest.param({**OK_CHAT, "n": 2}, "n=2 is not supported", "n", id="n=2"),
    pytest.param({**OK_CHAT, "tools": [{"type": "function"}]}, "tools.0.function is required", "tools.0.function",
                 id="tool-without-function"),
]


@pytest.mark.parametrize("body, says, param", WRONG_FIELDS)
def test_fields_of_the_wrong_type_or_range(http, body, says, param):
    assert_error(post(http, body), 400, says=says, param=param)


def test_unknown_model_is_404_model_not_found(http):
    assert_error(post(http, {**OK_CHAT, "model": "gpt-4o"}), 404, says="'gpt-4o' does not exist", param="model",
                 code="model_not_found")


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 80}]}, "messages"),
    ("/v1/completions", {"prompt": "word " * 80}, "prompt"),
])
def test_prompt_over_the_kv_budget(http, path, body, param):
    assert_error(post(http, body, path), 400, says="KV budget 64 tokens", param=param,
                 code="context_length_exceeded")


def test_prompt_over_budget_via_the_openai_client(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0,
                           http_client=httpx.Client(trust_env=False))
    with pytest.raises(openai.BadRequestError, match="at most 63 prompt tokens") as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 80}], stream=True)
    assert caught.value.code == "context_length_exceeded"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": "Basic dGVzdC1rZXk="}])
def test_wrong_or_missing_api_key_is_401(server, headers):
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
        r = httpx.request(method, f"{server.url}{path}", json=OK_CHAT, headers=headers, trust_env=False)
        assert_error(r, 401, says="API key", code="invalid_api_key")
    assert httpx.get(f"{server.url}/health", trust_env=False).status_code == 200   # health needs no key


def test_wrong_api_key_via_the_openai_client(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0,
                           http_client=httpx.Client(trust_env=False))
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        client.models.list()


def test_unknown_path_and_method_are_openai_errors(http):
    assert_error(http.get("/v1/embeddings"), 404, says="not an endpoint")
    assert_error(http.get("/v1/chat/completions"), 405, says="GET is not allowed")


def test_body_over_the_size_limit_is_413(http):
    assert_error(post(http, b'{"prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}', "/v1/completions"), 413,
                 says="bytes")
