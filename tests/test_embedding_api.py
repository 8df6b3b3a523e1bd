"""The README's embedding example (examples/embed.py) runs as a plain program, against a real
package, with torch, transformers, onnx, fastapi and uvicorn made unimportable: the runtime extras
are all it needs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slm.runtime import Engine, SamplingParams

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "embed.py"
NOT_RUNTIME = ("torch", "transformers", "onnx", "fastapi", "uvicorn", "starlette")

# Runs the example as `python examples/embed.py PACKAGE` would, but with the packages above blocked.
LAUNCH = f"""
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_RUNTIME!r}:
            raise ImportError(f"{{name}} is blocked: the runtime must not need it")
sys.meta_path.insert(0, Block())
sys.argv = [{str(EXAMPLE)!r}, sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_embed_example_runs_with_only_the_runtime(tiny_package):
    run = subprocess.run([sys.executable, "-c", LAUNCH, str(tiny_package)], capture_output=True, text=True,
                         timeout=120, cwd=EXAMPLE.parents[1])
    assert run.returncode == 0, run.stderr

    engine = Engine(tiny_package)
    greedy = SamplingParams(temperature=0.0)
    messages = [{"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "Name three primary colours."}]
    chat = list(engine.generate(messages, params=greedy, max_tokens=32))
    reply, last = "".join(e.text for e in chat), chat[-1]
    completion = list(engine.generate("The sky is", raw=True, params=greedy, max_tokens=16, stop=["."],
                                      cache=engine.new_cache()))

    assert run.stdout.startswith(reply + "\n")
    assert f"[{last.prompt_tokens} prompt + {last.generated_tokens} generated tokens, " in run.stdout
    assert f"finish: {last.finish_reason}]" in run.stdout
    expected = f"completion: {''.join(e.text for e in completion)!r} {completion[-1].finish_reason}"
    assert run.stdout.rstrip("\n").endswith(expected)
