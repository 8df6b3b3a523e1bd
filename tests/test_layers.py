"""Imports run one way: the core at the bottom, the stages on it, the CLI (the composition root) on
top. import-linter checks the contracts in pyproject.toml; two installs are run for real in a fresh
interpreter: `slm export` with no ONNX Runtime, `slm chat --help` importing no torch."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a fresh interpreter in which `import onnxruntime` fails (and importlib.util.find_spec says it is
# not there), as with only `pip install 'slm[export]'`
NO_ONNXRUNTIME = "import sys\nsys.modules['onnxruntime'] = None\n"


def test_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: the layers, and no torch under the runtime."""
    importlinter = pytest.importorskip("importlinter.cli")
    assert importlinter.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_the_layers_contract_catches_an_import_back_up():
    """The contract bites: the core importing the runtime (which it did, to build packages) breaks it."""
    grimp = pytest.importorskip("grimp")
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [{m.strip() for m in layer.split("|")}
              for layer in next(c["layers"] for c in config["contracts"] if c["type"] == "layers")]
    core, runtime = min(layers[-1]), min(m for m in layers[-2] if m.endswith("runtime"))   # the core, the runtime above
    graph = grimp.build_graph(*config["root_packages"])
    assert not graph.find_illegal_dependencies_for_layers(layers=layers)
    graph.add_import(importer=f"{core}.paths", imported=f"{runtime}.engine")
    assert graph.find_illegal_dependencies_for_layers(layers=layers)


def test_slm_export_runs_without_onnxruntime(tmp_path, smollm2_tokenizer):
    from tests.conftest import tiny_llama
    folder = tmp_path / "hf"
    tiny_llama().save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    code = NO_ONNXRUNTIME + (
        "from slm.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('ORT:' + str(sys.modules['onnxruntime'] is not None))\n"
        "sys.exit(rc)\n")
    run = lambda *args: subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                                       timeout=300, cwd=ROOT)
    out = run("export", str(folder), str(tmp_path / "pkg"), "--quant", "fp16")
    assert out.returncode == 0, out.stderr
    assert "ORT:False" in out.stdout and (tmp_path / "pkg" / "manifest.json").is_file()
    # an int4 export calibrates its int8/int4 KV graphs on ONNX Runtime: one line naming what to install
    out = run("export", str(folder), str(tmp_path / "pkg4"), "--quant", "int4")
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines()[-1].startswith("error: calibrating the int8/int4 KV cache scales") \
        and "slm[cpu,export]" in out.stderr and "Traceback" not in out.stderr


def test_slm_chat_help_imports_no_torch():
    code = ("import sys\n"
            "from slm.cli.main import main\n"
            "try:\n    main(['chat', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'onnx'})\n"
            "print('HEAVY:' + ','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "--kv-budget" in out.stdout and "HEAVY:\n" in out.stdout, out.stdout[-300:]
