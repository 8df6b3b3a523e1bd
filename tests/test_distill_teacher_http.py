"""The OpenAI-compatible teacher against a real HTTP server on 127.0.0.1, and a real SIGKILL mid-run."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from slm.distill.rationales import generate_rationales
from slm.distill.tasks import get_task
from slm.distill.teachers import EndpointConfig, OpenAITeacher
from slm.core.errors import SlmError

REPO = Path(__file__).resolve().parents[1]
CANNED = "There are 2 and 3 more. 2 + 3 = 5. The answer is (2 + 3).\n\nQ: rambling on. The answer is (9 * 9)."


class Server(ThreadingHTTPServer):
    """Records every call. Nothing depends on timing: model 'slow' answers only once `release` is set
    (so a client timeout is the only way out); with `hold_after` N, calls after the N-th wait for
    `release` too (a run cannot finish before the test lets it); with `meet` N, the first calls wait (5 s
    at most) until N are in flight together, so a client that overlaps its requests shows it."""
    daemon_threads = True

    def __init__(self, delay_s=0.0):
        super().__init__(("127.0.0.1", 0), Handler)
        self.delay_s, self.lock, self.in_flight, self.max_in_flight = delay_s, threading.Condition(), 0, 0
        self.calls: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.release = threading.Event()
        self.hold_after: int | None = None
        self.meet: int | None = None
        self.refuse_response_format = False


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, payload, headers=()):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        with s.lock:
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
            s.calls[model] = s.calls.get(model, 0) + 1
            s.bodies.append(body)
            n = s.calls[model]
            s.lock.notify_all()
            need = s.meet
            if need:
                s.lock.wait_for(lambda: s.in_flight >= need, timeout=5)
                s.meet = None                       # met (or never: then max_in_flight says so); wait no more
        try:
            time.sleep(s.delay_s)
            if s.hold_after is not None and n > s.hold_after:
                s.release.wait(timeout=60)
            if self.headers.get("Authorization") != "Bearer good-key":
                return self._send(401, {"error": {"message": "invalid api key"}})
            if model == "missing":
                return self._send(404, {"error": {"message": "model not found"}})
            if s.refuse_response_format and "response_format" in body:
                return self._send(400, {"error": {"message": "response_format type 'json_schema' is not supported",
                                                  "param": "response_format"}})
            if model == "slow":
                s.release.wait(timeout=60)
            if model == "flaky" and n <= 2:
                return self._send(503, {"error": "overloaded"}, [("Retry-After", "0")])
            if self.path == "/v1/completions":
                return self._send(200, {"choices": [{"text": " " + CANNED}]})
            if self.path == "/v1/chat/completions":
                return self._send(200, {"choices": [{"message": {"role": "assistant", "content": CANNED}}]})
            return self._send(404, {"error": "no route"})
        finally:
            with s.lock:
                s.in_flight -= 1


@pytest.fixture
def server():
    srv = Server(delay_s=0.05)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def _teacher(srv, **kw):
    config = dict(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", model="good", api_key="good-key",
                  concurrency=3, timeout_s=0.5, retries=2, backoff_s=0.01) | kw
    return OpenAITeacher(EndpointConfig(**config))


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_answers_with_bounded_concurrency(server, tmp_path, endpoint):
    task = get_task("svamp")
    server.meet = 2
    run = generate_rationales(task, "test", _teacher(server, endpoint=endpoint), tmp_path / "r.jsonl", limit=12)
    assert run.store.kept == 12 and run.failed == 0
    assert 1 < server.max_in_flight <= 3
    body = server.bodies[0]
    assert body["stop"] == ["\n\nQ:"] and body["temperature"] == 0
    record = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert record["answer"] == "(2 + 3)" and record["teacher"].startswith("openai:good@http://127.0.0.1")
    assert record["prompt_version"] == ("svamp-cot-v1/completions" if endpoint == "completions"
                                        else "svamp-cot-v1/chat-json-v1")
    if endpoint == "chat":
        assert body["messages"][0]["role"] == "system" and body["response_format"]["type"] == "json_schema"


def test_structured_output_refused_falls_back_once_for_the_run(server, tmp_path, caplog):
    """A server that answers 400 to response_format (as `slm serve` did): asked again without it, said once."""
    server.refuse_response_format = True
    teacher = _teacher(server, endpoint="chat", concurrency=1)
    with caplog.at_level("WARNING", logger="slm.distill"):
        run = generate_rationales(get_task("svamp"), "test", teacher, tmp_path / "r.jsonl", limit=4)
    assert run.store.kept == 4 and run.failed == 0 and not teacher.structured
    with_format = [b for b in server.bodies if "response_format" in b]
    assert len(with_format) == 1 and len(server.bodies) == 5      # one refusal, then four plain requests
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "does not take response_format (HTTP 400" in caplog.records[0].message


def test_retries_with_backoff_then_succeeds(server, tmp_path):
    run = generate_rationales(get_task("svamp"), "test", _teacher(server, model="flaky", concurrency=1),
                              tmp_path / "r.jsonl", limit=1)
    assert run.store.kept == 1 and server.calls["flaky"] == 3  # two 503s, then an answer


def test_timeouts_become_counted_failures_asked_again(server, tmp_path):
    out = tmp_path / "r.jsonl"
    run = generate_rationales(get_task("svamp"), "test", _teacher(server, model="slow", timeout_s=0.2, retries=1),
                              out, limit=2)
    assert run.failed == 2 and run.store.kept == 0 and "ReadTimeout" in next(iter(run.failures))
    assert server.calls["slow"] == 4                # each asked twice (retries=1), each time given up on
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize("kw, message", [
    ({"api_key": "bad-key"}, "refused the API key \\(HTTP 401\\)"),
    ({"model": "missing"}, "has no model 'missing' or no /completions route \\(HTTP 404\\)"),
])
def test_auth_and_not_found_stop_the_run(server, tmp_path, kw, message):
    with pytest.raises(SlmError, match=message):
        generate_rationales(get_task("svamp"), "test", _teacher(server, **kw), tmp_path / "r.jsonl", limit=20)
    assert sum(server.calls.values()) <= 6  # stopped at once, not after all 20


def test_resume_after_sigkill(server, tmp_path):
    """Kill the real CLI process mid-run, run it again: every input stored exactly once."""
    server.delay_s, server.hold_after = 0.02, 40        # the first run cannot get past 40 answers
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "slm.distill", "rationales", "--task", "svamp", "--split", "test",
           "--teacher", "openai", "--model", "good", "--api-key", "good-key", "--concurrency", "2",
           "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1", "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 25):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = out.read_text().count("\n")
    assert proc.returncode == -signal.SIGKILL and 25 <= stored <= 40, "the run must be killed mid-way"
    server.release.set()

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"already stored {stored}" in done.stdout and "kept 200 / rejected 0" in done.stdout
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"test-{i}" for i in range(200))  # none lost, none duplicated
