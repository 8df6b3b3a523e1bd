"""Load test for `slm serve`: N concurrent streaming clients, each sending M chat requests.

    python bench/load_serve.py                         # the default model, 16 clients x 50 requests
    python bench/load_serve.py --model PKG --clients 4 --requests 5 --max-tokens 16

Starts `python -m slm.cli serve` on 127.0.0.1 (a free port) as a subprocess, drives it with
httpx streaming clients, and prints a markdown table: requests, errors, p50/p95 latency and time to
first token, generated tokens/s over the whole run, and the server's peak resident memory.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

PROMPTS = ["Why is the sky blue?", "Write a haiku about rain.", "What is 12 times 7?",
           "Give me three tips for learning a language.", "Explain what a CPU cache is.",
           "Name a famous painting and its painter.", "How do plants make food?", "What is a prime number?"]


@dataclass
class Results:
    latencies_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    errors: Counter = field(default_factory=Counter)


def start_server(args) -> tuple[subprocess.Popen, str]:
    """`slm serve` on a free port; returns the process and its base URL once it accepts requests."""
    cmd = [sys.executable, "-m", "slm.cli", "serve", "--port", "0", "--max-concurrent", str(args.max_concurrent),
           "--max-queue", str(args.max_queue)]
    for flag, value in (("--model", args.model), ("--threads", args.threads), ("--kv-budget", args.kv_budget),
                        ("--provider", args.provider)):
        if value is not None:
            cmd += [flag, str(value)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in server.stdout:                  # serve() prints its URL once the socket is bound
        found = re.search(r"at (http://\S+)/v1", line)
        if found:
            break
    else:
        raise SystemExit(f"the server exited with code {server.wait()} before it started; see its output above")
    url = found.group(1)
    # keep reading the server's stdout (uvicorn's access log), or it blocks once the pipe is full
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/health", trust_env=False).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit(f"the server at {url} did not answer /health")
        time.sleep(0.2)


async def one_request(http: httpx.AsyncClient, body: dict, results: Results) -> None:
    t0 = time.perf_counter()
    first, usage = None, None
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                results.errors[f"HTTP {response.status_code}"] += 1
                await response.aread()
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    results.errors["error in stream"] += 1
                    return
                if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
                usage = chunk.get("usage") or usage
    except httpx.HTTPError as e:
        results.errors[type(e).__name__] += 1
        return
    if usage is None:
        results.errors["no usage"] += 1
        return
    results.latencies_s.append(time.perf_counter() - t0)
    results.ttfts_s.append((first or time.perf_counter()) - t0)
    results.completion_tokens += usage["completion_tokens"]


async def client(url: str, index: int, args, results: Results) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, trust_env=False) as http:
        for j in range(args.requests):
            body = {"messages": [{"role": "user", "content": PROMPTS[(index + j) % len(PROMPTS)]}],
                    "max_tokens": args.max_tokens, "temperature": 0.7, "seed": index * 1000 + j, "stream": True,
                    "stream_options": {"include_usage": True}}
            await one_request(http, body, results)


def peak_rss_bytes(pid: int) -> int | None:
    """The process's high-water resident set (Linux: VmHWM)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="package folder or source (default: the embedded default model)")
    p.add_argument("--clients", type=int, default=16, help="concurrent streaming clients")
    p.add_argument("--requests", type=int, default=50, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-concurrent", type=int, default=2, help="the server's generation slots")
    p.add_argument("--max-queue", type=int, default=None, help="the server's line (default: --clients, so no 429s)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kv-budget", default=None)
    p.add_argument("--provider", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    args = p.parse_args(argv)
    for name in ("clients", "requests", "max_tokens", "max_concurrent"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    args.max_queue = args.clients if args.max_queue is None else args.max_queue

    server, url = start_server(args)
    results = Results()
    try:
        idle_rss = peak_rss_bytes(server.pid)
        t0 = time.perf_counter()
        asyncio.run(_run_clients(url, args, results))
        wall = time.perf_counter() - t0
        peak = peak_rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    if peak is None:    # no /proc: the largest RSS among finished children (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(table(args, results, wall=wall, peak_rss=peak, idle_rss=idle_rss))


async def _run_clients(url: str, args, results: Results) -> None:
    await asyncio.gather(*(client(url, i, args, results) for i in range(args.clients)))


def table(args, r: Results, *, wall: float, peak_rss: int | None, idle_rss: int | None) -> str:
    mib = lambda b: f"{b / 2**20:.0f} MiB" if b else "n/a"  # noqa: E731
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    errors = sum(r.errors.values())
    rows = [
        ("clients x requests", f"{args.clients} x {args.requests} (max_tokens {args.max_tokens}, "
                               f"{args.max_concurrent} slots, queue {args.max_queue})"),
        ("completed", f"{len(r.latencies_s)}"),
        ("errors", f"{errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in r.errors.items())})" if errors else "")),
        ("latency p50 / p95", f"{ms(percentile(r.latencies_s, 50))} / {ms(percentile(r.latencies_s, 95))}"),
        ("time to first token p50 / p95", f"{ms(percentile(r.ttfts_s, 50))} / {ms(percentile(r.ttfts_s, 95))}"),
        ("generated tokens/s (all clients)", f"{r.completion_tokens / wall:.1f} ({r.completion_tokens} tokens "
                                             f"in {wall:.1f} s)"),
        ("server peak RSS (idle after start)", f"{mib(peak_rss)} ({mib(idle_rss)})"),
    ]
    return "\n".join(["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


if __name__ == "__main__":
    main()
