"""bench/load_serve.py still runs end to end: a tiny load on the tiny package, through `slm serve`."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "load_serve.py"


def test_load_bench_runs_and_reports(tiny_package):
    run = subprocess.run([sys.executable, str(BENCH), "--model", str(tiny_package), "--clients", "3", "--requests", "2",
                          "--max-tokens", "4", "--max-concurrent", "2"], capture_output=True, text=True, timeout=180,
                         cwd=BENCH.parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    rows = dict(line.strip("|").split("|")[:2] for line in run.stdout.splitlines() if line.startswith("| "))
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["completed"] == "6" and rows["errors"] == "0"
    assert re.fullmatch(r"\d+ MiB \(\d+ MiB\)", rows["server peak RSS (idle after start)"])
    assert "tokens in" in rows["generated tokens/s (all clients)"]
