"""SIGKILL a real run mid-way, without betting on the machine's speed.

The run is killed as soon as a file it writes shows it got far enough (`reached`); a loaded machine
can only delay the kill, and `finished` says whether the run got to its end before the kill landed. If
it did, the kill proved nothing: `reset` clears its output and the run starts again (3 tries), so the
caller always gets a run killed between `reached` and its end, or a clear failure.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Callable


def holds(check: Callable[[], bool]) -> bool:
    """`check()`, reading as False while the file it reads is missing or half-written."""
    try:
        return bool(check())
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):     # TypeError: None[...]
        return False


def kill_mid_run(cmd: list[str], *, reached: Callable[[], bool], finished: Callable[[], bool],
                 reset: Callable[[], None], cwd=None, env=None, timeout_s: float = 180, tries: int = 3) -> None:
    for _ in range(tries):
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not holds(reached) and proc.poll() is None:
            assert time.monotonic() < deadline, f"{cmd[:4]}… never reached the kill point in {timeout_s:.0f} s"
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)         # the run and any workers it started
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), f"the run failed by itself (exit {proc.returncode})"
        if not holds(finished):
            return
        reset()
    raise AssertionError(f"the run finished before the kill landed, {tries} times")
