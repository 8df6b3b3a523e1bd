"""What every peer script shares (stdlib only: each peer runs in its own virtual environment).

A peer script is run as `PYTHON bench/peers/NAME.py JOB.json` and prints one JSON line. The job is

    {"mode": "speed",   "model": PATH, "ids": [...], "new_tokens": 128, "threads": 2, "ctx": 2304}
    {"mode": "quality", "model": PATH, "prompts": [[...], ...], "new_tokens": 32, "windows": [[...], ...], "threads": 2}
    {"mode": "prepare", "model": SOURCE, "out": PATH, "variant": "int4"}

speed   -> {"ttft_s", "decode_tps", "prefill_tps", "prompt_tokens", "new_tokens", "tokens", "load_s", "peak_rss_mib", "version"}
quality -> {"tokens": [[...] per prompt], "nll": [[...] per window], "version"}

Timing is the same everywhere: t0 just before the prompt goes in; the first token's time is TTFT
(prefill plus choosing the token); decode tokens/s = (new tokens - 1) / (last token time - first token time).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _load_resources():
    """slm/core/resources.py (stdlib only), loaded by path: a peer's own environment has no slm installed."""
    import importlib.util
    path = Path(__file__).resolve().parents[2] / "slm/core/resources.py"
    spec = importlib.util.spec_from_file_location("slm_resources", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peak_rss_mib = _load_resources().peak_rss_mib     # the one copy of each, whatever the environment


size_mib = _load_resources().size_mib


class TokenClock:
    """Time stamps of generated tokens relative to the prompt going in."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.times: list[float] = []
        self.tokens: list[int] = []

    def token(self, tok: int) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(int(tok))

    def result(self, prompt_tokens: int) -> dict:
        ttft = self.times[0] - self.t0
        n = len(self.times)
        decode = (n - 1) / (self.times[-1] - self.times[0]) if n > 1 else 0.0
        return {"ttft_s": ttft, "decode_tps": decode, "prefill_tps": prompt_tokens / ttft,
                "prompt_tokens": prompt_tokens, "new_tokens": n, "tokens": self.tokens}


def nll(logits, target: int) -> float:
    """-log p(target) from one row of logits (numpy: every peer's environment has it)."""
    import numpy as np
    row = np.asarray(logits, np.float64).reshape(-1)
    m = row.max()
    return float(m + np.log(np.exp(row - m).sum()) - row[target])


def main(handlers: dict) -> None:
    """Read the job file named on the command line, run the handler for its mode, print JSON."""
    job = json.loads(Path(sys.argv[1]).read_text())
    out = handlers[job["mode"]](job)
    if job["mode"] == "speed":
        out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))
