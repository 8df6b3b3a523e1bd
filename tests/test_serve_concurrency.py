"""Concurrent requests on one engine: each on its own pooled KV cache, a bounded line (429 beyond
it), and a client that leaves mid-answer stops its generation and frees its slot.

`PacedEngine` is the real engine with a hand on the throttle (a pause per token, a gate before the
first, or a hold after a few tokens that only the request's cancel event lifts), so that "the slot is
busy" lasts as long as the test needs, however loaded the machine: nothing here asserts a duration.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from slm.runtime import Engine, SamplingParams
from slm.runtime.serve import BackgroundServer, create_app

MODEL = "tiny-llama"


class PacedEngine:
    """Delegates to a real Engine; `generate` sleeps `delay_s` per event and waits for `gate` first; with
    `hold_after` the first generation stops after that many events until its request is cancelled (30 s
    at most, then it goes on, so a cancellation that never comes shows as a finish_reason, not a hang).
    Records each generation's last event, and counts `new_cache` calls."""

    def __init__(self, engine: Engine, *, delay_s: float = 0.0, gate: threading.Event | None = None,
                 hold_after: int | None = None):
        self.engine, self.delay_s, self.gate, self.hold_after = engine, delay_s, gate, hold_after
        self.capacity, self.manifest, self.path = engine.capacity, engine.manifest, engine.path
        self.finished: list = []
        self.new_caches = 0

    def __getattr__(self, name):            # the tokenizer, grammars() ... of the real engine
        return getattr(self.engine, name)

    def new_cache(self):
        self.new_caches += 1
        return self.engine.new_cache()

    def generate(self, prompt, **kwargs):
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "test gate never opened"
        last = None
        for i, last in enumerate(self.engine.generate(prompt, **kwargs), 1):
            time.sleep(self.delay_s)
            yield last
            if i == self.hold_after:
                self.hold_after = None                  # the first generation only
                kwargs["cancel"].wait(timeout=30)
        self.finished.append(last)


def health(server) -> dict:
    return httpx.get(f"{server.url}/health", trust_env=False).json()


def wait_for(predicate, *, timeout_s: float = 10.0, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def chat_body(content: str, max_tokens: int, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


@pytest.fixture(scope="module")
def engine(tiny_package) -> Engine:
    return Engine(tiny_package)


def test_concurrent_requests_use_separate_caches_and_match_solo_runs(engine):
    paced = PacedEngine(engine, delay_s=0.002)      # interleave the workers' tokens
    prompts = [f"Tell me about the number {i}." for i in range(6)]
    solo = ["".join(e.text for e in engine.generate([{"role": "user", "content": p}], max_tokens=20,
                                                     params=SamplingParams(temperature=0.0), cache=engine.new_cache()))
            for p in prompts]
    with BackgroundServer(create_app(paced, model_id=MODEL, max_concurrent=3, max_queue=8)) as server:
        assert paced.new_caches == 3                # the pool, made once
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0,
                               http_client=httpx.Client(trust_env=False))

        def ask(p: str) -> str:
            return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                                  max_tokens=20, temperature=0).choices[0].message.content
        with ThreadPoolExecutor(len(prompts)) as pool:
            answers = list(pool.map(ask, prompts))
        assert answers == solo
        assert paced.new_caches == 3                # no request allocated a cache
        assert health(server)["slots"] == {"total": 3, "idle": 3}


def test_client_leaving_mid_stream_cancels_and_frees_the_slot(engine):
    paced = PacedEngine(engine, hold_after=6)       # only the hang-up lets it past token 6
    with BackgroundServer(create_app(paced, model_id=MODEL, max_concurrent=1, max_queue=4)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0,
                               http_client=httpx.Client(trust_env=False))
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Go on."}],
                                                max_tokens=400, temperature=0, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()                              # hang up
        wait_for(lambda: len(paced.finished) == 1, timeout_s=60, what="the generation to stop")
        assert paced.finished[0].finish_reason == "cancelled" and paced.finished[0].generated_tokens < 400
        wait_for(lambda: health(server)["slots"]["idle"] == 1, what="the slot to be free")
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=5, temperature=0)
        assert reply.choices[0].finish_reason == "length"


def test_client_leaving_a_non_streaming_request_cancels_it(engine):
    paced = PacedEngine(engine, hold_after=2)       # it cannot answer before the client gives up
    with BackgroundServer(create_app(paced, model_id=MODEL, max_concurrent=1, max_queue=4)) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=chat_body("Go on.", 400), timeout=0.3,
                       trust_env=False)
        wait_for(lambda: len(paced.finished) == 1, timeout_s=60, what="the generation to stop")
        assert paced.finished[0].finish_reason == "cancelled"
        wait_for(lambda: health(server)["slots"]["idle"] == 1, what="the slot to be free")
        assert httpx.post(f"{server.url}/v1/chat/completions", json=chat_body("Hi", 3),
                          trust_env=False).status_code == 200


def test_a_full_line_gets_429_with_retry_after(engine):
    gate = threading.Event()
    paced = PacedEngine(engine, gate=gate)
    with BackgroundServer(create_app(paced, model_id=MODEL, max_concurrent=1, max_queue=1)) as server:
        url = f"{server.url}/v1/chat/completions"
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(httpx.post, url, json=chat_body("one", 3), timeout=30, trust_env=False)
            wait_for(lambda: health(server)["slots"]["idle"] == 0, what="the first request to hold the slot")
            waiting = pool.submit(httpx.post, url, json=chat_body("two", 3), timeout=30, trust_env=False)
            wait_for(lambda: health(server)["waiting"] == 1, what="the second request to wait")
            refused = httpx.post(url, json=chat_body("three", 3), trust_env=False)
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert "--max-queue 1" in refused.json()["error"]["message"]
            gate.set()
            assert running.result().status_code == 200 and waiting.result().status_code == 200
        assert health(server) == {"status": "ok", "model": MODEL, "slots": {"total": 1, "idle": 1}, "waiting": 0}
        assert httpx.post(url, json=chat_body("four", 3), trust_env=False).status_code == 200


def test_openai_client_sees_429_as_rate_limit_error(engine):
    gate = threading.Event()
    paced = PacedEngine(engine, gate=gate)
    with BackgroundServer(create_app(paced, model_id=MODEL, max_concurrent=1, max_queue=0)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0,
                               http_client=httpx.Client(trust_env=False))
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"{server.url}/v1/chat/completions", json=chat_body("one", 3),
                                  timeout=30, trust_env=False)
            wait_for(lambda: health(server)["slots"]["idle"] == 0, what="the slot to be taken")
            with pytest.raises(openai.RateLimitError, match="all generation slots are busy"):
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
            gate.set()
            assert running.result().status_code == 200


def test_shutdown_cancels_generations_that_outlast_the_grace_period(engine):
    paced = PacedEngine(engine, hold_after=2)       # it cannot finish before the grace period ends
    server = BackgroundServer(create_app(paced, model_id=MODEL, max_concurrent=1, max_queue=1),
                              graceful_shutdown_s=0.5)
    server.start()
    with httpx.Client(trust_env=False, timeout=30) as client:
        try:
            with client.stream("POST", f"{server.url}/v1/chat/completions",
                               json=chat_body("Go.", 400, stream=True)) as response:
                next(response.iter_lines())
                server.stop()                       # what Ctrl-C does, while the client still reads
        finally:
            server.stop()
    assert paced.finished[0].finish_reason == "cancelled" and paced.finished[0].generated_tokens < 400


def test_a_client_that_leaves_while_waiting_costs_nothing(engine):
    gate = threading.Event()
    paced = PacedEngine(engine, gate=gate)
    with BackgroundServer(create_app(paced, model_id=MODEL, max_concurrent=1, max_queue=2)) as server:
        url = f"{server.url}/v1/chat/completions"
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, url, json=chat_body("one", 3), timeout=30, trust_env=False)
            wait_for(lambda: health(server)["slots"]["idle"] == 0, what="the first request to hold the slot")
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=chat_body("two", 3), timeout=0.3, trust_env=False)
            gate.set()
            assert running.result().status_code == 200
        wait_for(lambda: health(server) == {"status": "ok", "model": MODEL, "slots": {"total": 1, "idle": 1},
                                            "waiting": 0}, what="the line to empty")
        assert len(paced.finished) == 1             # the second request never reached the engine


def test_slot_pool_is_first_come_first_served_and_survives_cancelled_waiters():
    import asyncio

    from slm.runtime.serve.slots import QueueFullError, SlotPool

    async def scenario():
        pool = SlotPool(["cache"], max_queue=2)
        held = await pool.acquire()
        first = asyncio.create_task(pool.acquire())
        second = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="2 requests are already waiting"):
            await pool.acquire()
        first.cancel()                              # a waiter gives up: the cache must skip it
        await asyncio.sleep(0)
        pool.release(held)
        assert await second == "cache" and pool.waiting == 0
        pool.release("cache")
        assert (pool.idle, pool.total) == (1, 1)

    asyncio.run(scenario())
