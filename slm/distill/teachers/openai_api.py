"""A teacher behind any OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, slm's server).

Requests run on `concurrency` threads sharing one `httpx.Client`, each with a timeout. Timeouts,
connection errors, 429 and 5xx are retried with exponential backoff (`backoff_s * 2**attempt`,
or the server's Retry-After when it is shorter than `max_backoff_s`); after `retries` retries the
example is reported as a `TeacherFailure` and asked again on the next run. 401/403 (bad key) and
404 (unknown model or path) stop the whole run at once with `SlmError`: every request would fail.

The chat endpoint gets the conversation of `slm.distill.teachers.chat` (a system message with the reply
format, the task's worked examples as turns) and, with `structured`, OpenAI's `response_format` with
a strict JSON Schema `{rationale, answer}`. A server that answers 400 naming `response_format` is asked
again without it, and for the rest of the run (said once on the console): the messages are the same,
so the store and its prompt version are too. Replies are read by `slm.distill.replies.parse_reply`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import httpx

from slm.core.errors import SlmError

from slm.distill.replies import parse_reply
from slm.distill.tasks.base import Example, Parsed, Rejection, Task
from slm.distill.teachers.base import Reply, TeacherFailure
from slm.distill.teachers.chat import CHAT_PROMPT_VERSION, RESPONSE_FORMAT, chat_messages

log = logging.getLogger("slm.distill")

ENDPOINTS = ("completions", "chat")
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str                   # e.g. "http://127.0.0.1:8000/v1"
    model: str
    api_key: str | None = None
    endpoint: str = "completions"   # "completions" (raw few-shot prompt) or "chat" (prompt as one user message)
    concurrency: int = 4
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_tokens: int = 256
    temperature: float = 0.0
    structured: bool = True         # chat: send response_format (a JSON Schema); dropped if the server refuses it

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise SlmError(f"unknown endpoint kind {self.endpoint!r}; accepted: {', '.join(ENDPOINTS)}")
        if self.concurrency < 1:
            raise SlmError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.retries < 0 or self.timeout_s <= 0:
            raise SlmError(f"retries must be >= 0 and timeout_s > 0, got {self.retries} and {self.timeout_s}")


class OpenAITeacher:
    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.id = f"openai:{config.model}@{config.base_url.rstrip('/')}"
        self.structured = config.endpoint == "chat" and config.structured  # False once the server refuses it
        self._lock = threading.Lock()

    def prompt_version(self, task: Task) -> str:
        if self.config.endpoint == "chat":
            return f"{task.prompt_version}/{CHAT_PROMPT_VERSION}"
        return f"{task.prompt_version}/completions"

    def parse(self, task: Task, text: str, example: Example) -> Parsed | Rejection:
        return parse_reply(task, text, example)

    def answer(self, task: Task, examples: Sequence[Example]) -> Iterator[tuple[Example, Reply]]:
        c = self.config
        headers = {"Authorization": f"Bearer {c.api_key}"} if c.api_key else {}
        with httpx.Client(base_url=c.base_url.rstrip("/") + "/", headers=headers, timeout=c.timeout_s) as client, \
                ThreadPoolExecutor(max_workers=c.concurrency) as pool:
            pending = iter(examples)
            running: dict[Future, Example] = {}
            try:
                # keep at most `concurrency` requests in flight so a stop is prompt and memory bounded
                for example in pending:
                    running[pool.submit(self._ask, client, task, example)] = example
                    if len(running) >= c.concurrency:
                        yield from self._collect(running)
                while running:
                    yield from self._collect(running)
            finally:
                for future in running:
                    future.cancel()

    @staticmethod
    def _collect(running: dict[Future, Example]) -> Iterator[tuple[Example, Reply]]:
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in done:
            example = running.pop(future)
            yield example, future.result()  # re-raises SlmError from a worker

    def _ask(self, client: httpx.Client, task: Task, example: Example) -> Reply:
        c = self.config
        if c.endpoint == "completions":
            path, body = "completions", {"prompt": task.teacher_prompt(example)}
        else:
            path, body = "chat/completions", {"messages": chat_messages(task, example)}
        structured = self.structured
        if structured:
            body["response_format"] = RESPONSE_FORMAT
        body |= {"model": c.model, "max_tokens": c.max_tokens, "temperature": c.temperature, "stop": list(task.stop)}
        last, retry_after = "", None
        for attempt in range(c.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, retry_after))
            retry_after = None
            try:
                response = client.post(path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if response.status_code in (401, 403):
                raise SlmError(f"teacher endpoint {c.base_url} refused the API key (HTTP {response.status_code}); "
                               "pass a valid key with --api-key or OPENAI_API_KEY")
            if response.status_code == 404:
                raise SlmError(f"teacher endpoint {c.base_url} has no model {c.model!r} or no /{path} route "
                               "(HTTP 404); check --model and --base-url (it usually ends in /v1)")
            if structured and response.status_code in (400, 422) and "response_format" in response.text:
                self._drop_structured(response)
                return self._ask(client, task, example)
            if response.status_code in RETRYABLE_STATUS:
                last, retry_after = f"HTTP {response.status_code}", response.headers.get("retry-after")
                continue
            if response.status_code != 200:
                return TeacherFailure(f"HTTP {response.status_code}: {response.text[:200]}")
            try:
                choice = response.json()["choices"][0]
                return choice["text"] if c.endpoint == "completions" else choice["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                return TeacherFailure(f"malformed response: {response.text[:200]}")
        return TeacherFailure(f"gave up after {c.retries + 1} attempts: {last}")

    def _drop_structured(self, response: httpx.Response) -> None:
        with self._lock:
            if self.structured:
                self.structured = False
                log.warning("teacher endpoint %s does not take response_format (HTTP %d: %s); asking with the "
                            "plain prompt (the same messages, no JSON Schema) for the rest of this run",
                            self.config.base_url, response.status_code, _message(response))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.config.backoff_s * 2 ** (attempt - 1)
        if retry_after is not None:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.config.max_backoff_s)


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])[:160]
    except (ValueError, KeyError, TypeError):
        return response.text[:160]
