"""The runtime must run without torch, transformers or onnx: prove it in a fresh interpreter."""
import subprocess
import sys


def test_import_runtime_pulls_no_training_stack(tiny_package):
    code = (
        "import sys\n"
        "import slm.runtime.engine, slm.runtime.sampling, slm.runtime.detokenizer, slm.runtime.chat_template\n"
        "from slm.runtime import Engine\n"
        f"e = Engine({str(tiny_package)!r}, threads=1)\n"
        "text = ''.join(ev.text for ev in e.generate('hi', max_tokens=4))\n"
        "bad = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]\n"
        "print('BAD:' + ','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BAD:\n" in out.stdout, f"runtime imported {out.stdout.strip()}"
