"""A/B: unconstrained decode speed of the engine before constrained generation existed and now.

    python bench/constraint_ab.py --package PACKAGE                       # 10 rounds x 96 tokens
    python bench/constraint_ab.py --package PACKAGE --baseline e416c9f^ --rounds 20 --tokens 128 --threads 2

    A = the slm/runtime/ and slm/ of commit --baseline (default: main before issue 18 was merged), unpacked
        from git into a temporary folder: the generate path with no constraint code at all
    B = this checkout's engine, generate(..., constraint=None): the constraint code present, unused

Each side is a worker process holding one Engine (its own ONNX Runtime session) that sleeps on its
stdin between rounds, so only one side runs at a time. Rounds alternate the order (AB, BA, AB, ...)
on the same prompt, greedy, `ignore_eos`, a fresh cache each; the figure is the engine's own decode
tokens/s (first token to last). Prints a markdown table with the spread of each side and the ratio
B/A paired round by round, and the load average before and after (a shared machine's load is most
of the spread).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short story about a lighthouse keeper."
DEFAULT_BASELINE = "e416c9f^"       # main just before the merge of issue 18 (constrained generation)


def worker(package: str, threads: int | None) -> None:
    """Serve rounds on stdin/stdout: a line with a token count in, a JSON line with tokens/s out."""
    try:
        from slm.runtime import Engine          # this checkout: everything under the slm namespace
    except ModuleNotFoundError:
        from runtime import Engine              # a baseline from before the rename (top-level runtime/)
    engine = Engine(package, threads=threads)
    list(engine.generate(PROMPT, max_tokens=8, cache=engine.new_cache()))      # warm: first-call costs
    print(json.dumps({"ready": True, "runtime": str(Path(sys.modules[Engine.__module__].__file__).parent)}), flush=True)
    for line in sys.stdin:
        events = list(engine.generate(PROMPT, max_tokens=int(line), ignore_eos=True, cache=engine.new_cache()))
        print(json.dumps({"tokens_per_s": events[-1].tokens_per_s, "tokens": events[-1].generated_tokens}), flush=True)


class Side:
    def __init__(self, name: str, code_root: Path, package: str, threads: int | None):
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(code_root)}
        args = [sys.executable, str(Path(__file__).resolve()), "--worker", "--package", package]
        args += ["--threads", str(threads)] if threads else []
        self.proc = subprocess.Popen(args, env=env, cwd=tempfile.gettempdir(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        hello = json.loads(self._read())
        self.runtime = hello["runtime"]
        self.speeds: list[float] = []

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker exited ({self.proc.wait()}); see its stderr above")
        return line

    def round(self, tokens: int) -> None:
        self.proc.stdin.write(f"{tokens}\n")
        self.proc.stdin.flush()
        self.speeds.append(json.loads(self._read())["tokens_per_s"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def unpack(commit: str, into: Path) -> Path:
    """runtime/ and slm/ as of `commit` (a commit from before the slm namespace), from git, under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "runtime", "slm"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return f"{statistics.median(xs):.1f} | {q[0]:.1f}-{q[2]:.1f} | {min(xs):.1f}-{max(xs):.1f}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", required=True)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git commit of side A")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.package, args.threads)
    base = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], capture_output=True,
                          text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        before = load()
        sides = [Side(f"A: baseline {base}, no constraint code", unpack(args.baseline, Path(tmp)), args.package,
                      args.threads),
                 Side(f"B: this checkout ({head}), constraint=None", ROOT, args.package, args.threads)]
        try:
            for r in range(args.rounds):
                for side in sides if r % 2 == 0 else sides[::-1]:
                    side.round(args.tokens)
        finally:
            for side in sides:
                side.close()
    a, b = (s.speeds for s in sides)
    ratios = sorted(y / x for x, y in zip(a, b))
    print(f"package {Path(args.package).name}; {args.rounds} rounds x {args.tokens} tokens, alternating order, greedy, "
          f"ignore_eos; threads={args.threads or 'default'}; {platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; load average (1/5/15 min) {before} before, {load()} after\n")
    print("| side | median tokens/s | p25-p75 | min-max |\n|---|---:|---:|---:|")
    for side in sides:
        print(f"| {side.name} | {spread(side.speeds)} |")
    print(f"\nB/A paired by round: median {statistics.median(ratios):.3f}, min-max {ratios[0]:.3f}-{ratios[-1]:.3f} "
          f"({sum(r > 1 for r in ratios)} of {len(ratios)} rounds B faster)")
    print("per round, A: " + " ".join(f"{x:.1f}" for x in a) + "\nper round, B: " + " ".join(f"{x:.1f}" for x in b))


if __name__ == "__main__":
    main()
