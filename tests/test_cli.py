"""The slm command as a user runs it: streaming output, and one-line errors with exit code 2."""
import json
import shutil
import subprocess
import sys

import pytest


def slm(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "slm.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_generate_streams_text(tiny_package):
    out = slm("generate", "Hello", "--model", str(tiny_package), "--max-tokens", "8", "--threads", "1", "-v")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "8 generated" in out.stderr and "running on CPU" in out.stderr


def _corrupt(tmp_path, tiny_package):
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["format_version"] = 7
    (pkg / "manifest.json").write_text(json.dumps(m))
    return pkg


@pytest.mark.parametrize("make_args, message", [
    (lambda t, p: ["--model", str(t / "missing")], "does not exist"),
    (lambda t, p: ["--model", str(t)], "neither an slm package"),
    (lambda t, p: ["--model", str(_corrupt(t, p))], "format_version 7 is not supported"),
    (lambda t, p: ["--model", str(p), "--temperature", "-2"], "temperature=-2.0 is out of range"),
    (lambda t, p: ["--model", str(p), "--kv-budget", "40", "--raw", "--max-tokens", "1"], "take at most 39 prompt tokens"),
    (lambda t, p: ["--model", str(p), "--provider", "cuda"], "--provider cuda"),
    (lambda t, p: ["--model", str(p), "--kv-budget", "12parsecs"], "not understood"),
    (lambda t, p: ["--model", str(p), "--kv-policy", "streaming", "--evict-chunk", "0"], "evict_chunk=0 must be at least 1"),
    (lambda t, p: ["--model", str(p), "--kv-policy", "tova", "--lookup", "4"], "kv_policy is 'tova'"),
])
def test_user_errors_are_one_line(tmp_path, tiny_package, make_args, message):
    out = slm("generate", "word " * 60, *make_args(tmp_path, tiny_package))
    assert out.returncode == 2, (out.stdout, out.stderr)
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_export_rejects_unknown_quant(tmp_path):
    out = slm("export", "default", str(tmp_path / "x"), "--quant", "int3")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_export_rejects_unknown_k_quant_scales(tmp_path):
    out = slm("export", "default", str(tmp_path / "x"), "--k-quant-scales", "fp8")
    assert out.returncode == 2 and "invalid choice: 'fp8'" in out.stderr and "float32" in out.stderr
    from slm.core.errors import SlmError
    from slm.export import ExportOptions, build_package
    from tests.conftest import tiny_llama
    with pytest.raises(SlmError, match="--k-quant-scales 'fp8' is not a layout; accepted: float32, gguf"):
        build_package("default", tmp_path / "y", ExportOptions(quant="int4", k_quant_scales="fp8"), model=tiny_llama())


def test_distill_without_its_extra_is_listed_and_names_the_extra(tmp_path):
    """torch blocked as if slm[distill] were not installed: `slm distill` is still in the help, and
    running it says what to install instead of a traceback."""
    blocked = ("import sys; sys.modules['torch'] = None; from slm.cli.main import main; sys.exit(main(sys.argv[1:]))")
    run = lambda *a: subprocess.run([sys.executable, "-c", blocked, *a], capture_output=True, text=True, timeout=120)
    assert "distill" in run("--help").stdout
    out = run("distill", "train", "--task", "svamp", "--student", str(tmp_path), "--rationales", str(tmp_path / "r"),
              "--out", str(tmp_path / "o"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: slm distill needs the distill extra, which is not installed: "
                                 "pip install 'slm[distill]'"), out.stderr
    assert "Traceback" not in out.stderr


def test_chat_sampling_flags_come_from_main_argv_not_sys_argv(tiny_package, tmp_path, monkeypatch):
    """`main(argv)` decides whether the user set a sampling flag: a --temperature in sys.argv (the
    embedding process's own command line) must not reach the chat, and one in argv must."""
    pytest.importorskip("textual")
    import slm.tui.app
    from slm.cli.main import main
    monkeypatch.setenv("SLM_DATA", str(tmp_path / "data"))
    seen = []
    monkeypatch.setattr(slm.tui.app, "run_chat", lambda engine, **kw: seen.append(kw["params"]))
    monkeypatch.setattr(sys, "argv", ["host-app", "--temperature", "0.5"])
    chat = ["chat", "--model", str(tiny_package), "--threads", "1"]
    assert main(chat) == 0 and seen[-1] is None                 # the app's own defaults
    assert main(chat + ["--top-k", "5"]) == 0
    assert (seen[-1].top_k, seen[-1].temperature) == (5, 0.0)   # given, and the runtime's default for the rest
