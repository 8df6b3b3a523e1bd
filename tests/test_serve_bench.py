"""bench/load_serve.py end to end: a tiny load on the tiny package, through `slm serve`; its figures
must add up (every request counted once, as completed or as an error; tokens are the servers' usage)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "load_serve.py"


def _bench(tiny_package, *extra: str) -> dict[str, str]:
    run = subprocess.run([sys.executable, str(BENCH), "--model", str(tiny_package), "--clients", "3", "--requests", "2",
                          "--max-tokens", "4", *extra], capture_output=True, text=True, timeout=180,
                         cwd=BENCH.parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    rows = dict(line.strip("|").split("|")[:2] for line in run.stdout.splitlines() if line.startswith("| "))
    return {k.strip(): v.strip() for k, v in rows.items()}


def _ms(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"(\d+) ms", text)]


def test_load_bench_counts_every_request_and_token(tiny_package):
    rows = _bench(tiny_package, "--max-concurrent", "2")
    assert rows["completed"] == "6" and rows["errors"] == "0"
    rate, tokens, wall = re.fullmatch(r"([\d.]+) \((\d+) tokens in ([\d.]+) s\)",
                                      rows["generated tokens/s (all clients)"]).groups()
    assert int(tokens) == 6 * 4                          # 6 answers of max_tokens 4 (the tiny model never says EOS here)
    # the rate is tokens over the wall time, both as printed (0.1 s and 0.1 tok/s resolution)
    assert int(tokens) / (float(wall) + 0.05) - 0.05 <= float(rate) <= int(tokens) / max(float(wall) - 0.05, 1e-3) + 0.05
    (lat50, lat95), (ttft50, ttft95) = _ms(rows["latency p50 / p95"]), _ms(rows["time to first token p50 / p95"])
    assert lat50 <= lat95 and ttft50 <= ttft95 and ttft50 <= lat50
    peak, idle = map(int, re.fullmatch(r"(\d+) MiB \((\d+) MiB\)", rows["server peak RSS (idle after start)"]).groups())
    assert 0 < idle <= peak


def test_load_bench_counts_refused_requests_as_errors(tiny_package):
    # one slot and no line: 3 clients at once are refused with 429 whenever the slot is taken (how many
    # depends on the timing); whatever the count, each request is in the table once
    rows = _bench(tiny_package, "--max-concurrent", "1", "--max-queue", "0", "--max-tokens", "64")
    refused = re.fullmatch(r"0|(\d+) \(HTTP 429: \1\)", rows["errors"])
    assert refused, rows["errors"]
    assert int(rows["completed"]) + int(refused.group(1) or 0) == 6
