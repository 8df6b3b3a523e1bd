"""The README's Python example runs as written, against a real package."""
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tiny_package):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python example"
    run = subprocess.run([sys.executable, "-c", blocks[0], str(tiny_package)], capture_output=True, text=True,
                         timeout=120, cwd=README.parent)
    assert run.returncode == 0, run.stderr
    assert re.search(r"\d+ tokens, \d+ tokens/s, KV \d+/\d+ slots, finish: (stop|length)", run.stdout), run.stdout
