"""The OpenAI-compatible server against the official `openai` client, on a real uvicorn on 127.0.0.1.

Greedy answers are compared with `Engine.generate` run directly, so the server adds no tokens, drops
none, and reports the engine's own counts as `usage`.
"""
from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from slm.runtime import Engine, SamplingParams
from slm.runtime.serve import BackgroundServer, create_app

MODEL = "tiny-llama"
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def engine(tiny_package) -> Engine:
    return Engine(tiny_package)


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(create_app(engine, model_id=MODEL, max_concurrent=2, max_queue=8)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60,
                       http_client=httpx.Client(trust_env=False)) as c:
        yield c


def direct(engine: Engine, prompt, *, max_tokens: int, stop=(), raw: bool = False):
    """(text, last event) from the engine itself, on a cache of its own, greedy."""
    events = list(engine.generate(prompt, params=SamplingParams(temperature=0.0), max_tokens=max_tokens,
                                  stop=stop, raw=raw, cache=engine.new_cache()))
    return "".join(e.text for e in events), events[-1]


def test_chat_matches_engine_and_reports_its_usage(client, engine):
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    text, last = direct(engine, HELLO, max_tokens=12)
    assert reply.object == "chat.completion" and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == text
    assert choice.finish_reason == last.finish_reason == "length"
    assert reply.usage.prompt_tokens == last.prompt_tokens
    assert reply.usage.completion_tokens == last.generated_tokens == 12
    assert reply.usage.total_tokens == last.prompt_tokens + 12


def test_chat_stream_matches_non_streaming(client, engine):
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text, last = direct(engine, HELLO, max_tokens=12)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == last.generated_tokens
    assert chunks[-1].usage.prompt_tokens == last.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_stop_string_ends_the_answer_before_it(client, engine):
    full, _ = direct(engine, HELLO, max_tokens=24)
    words = full.split()
    assert len(words) > 3, full
    stop = words[2]                         # a word from the middle of the greedy answer
    expected, last = direct(engine, HELLO, max_tokens=24, stop=(stop,))
    assert expected == full[:full.index(stop)]
    for stream in (False, True):
        response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0,
                                                  stop=[stop], stream=stream)
        if stream:
            chunks = [c for c in response if c.choices]
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            text, finish = response.choices[0].message.content, response.choices[0].finish_reason
        assert text == expected and stop not in text
        assert finish == "stop"


def test_completions_are_raw_text(client, engine):
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=10, temperature=0)
    text, last = direct(engine, "The capital of France is", max_tokens=10, raw=True)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == text and reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (last.prompt_tokens, 10)
    streamed = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=10,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text


def test_completions_default_to_16_tokens_like_openai(client, engine):
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0)
    text, last = direct(engine, "Once upon a time", max_tokens=17, raw=True)
    assert last.generated_tokens == 17                  # the model would go on: the cap, not an EOS, stops it
    assert (reply.usage.completion_tokens, reply.choices[0].finish_reason) == (16, "length")


def test_seed_reproduces_a_sampled_answer(client):
    def ask(seed: int, temperature: float = 1.0):
        return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=temperature,
                                              seed=seed, extra_body={"top_k": 50}).choices[0].message.content
    assert ask(7) == ask(7)
    # a random tiny model at temperature 1 over 24 tokens: another seed, or greedy, cannot give the same text
    assert ask(8) != ask(7) and ask(7, temperature=0) != ask(7)


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("gpt-4o")
    health = httpx.get(f"{server.url}/health", trust_env=False).json()
    assert health == {"status": "ok", "model": MODEL, "slots": {"total": 2, "idle": 2}, "waiting": 0}


def test_openapi_schema_describes_the_request_bodies(server):
    schema = httpx.get(f"{server.url}/openapi.json", trust_env=False).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"} <= set(schema["paths"])
    assert "messages" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]


def test_importing_the_runtime_does_not_import_fastapi():
    code = "import sys, slm.runtime.engine; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
