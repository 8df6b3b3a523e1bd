"""Model sources: a local HF folder through `slm export`, the embedded GGUF, and clear errors."""
import subprocess
import sys

import pytest

from slm.runtime import Engine
from slm.core.errors import SourceError
from slm.export.load import forget_gguf_quantization
from slm.core.sources import default_gguf, resolve_source
from tests.conftest import tiny_llama


def test_hf_folder_exports_through_the_cli(tmp_path, smollm2_tokenizer):
    folder = tmp_path / "hf"
    tiny_llama().save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    assert resolve_source(str(folder)).kind == "hf"
    out = subprocess.run([sys.executable, "-m", "slm.cli", "export", str(folder), str(tmp_path / "pkg"),
                          "--quant", "int4"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    engine = Engine(tmp_path / "pkg", threads=1)
    assert engine.manifest.quant.mode == "int4" and engine.manifest.quant.bits == 4
    assert len(list(engine.generate("Hello", max_tokens=5))) == 5


def test_default_gguf_is_found_in_the_installed_wheel():
    path = default_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    src = resolve_source(None)
    assert src.kind == "gguf" and src.path == str(path)


@pytest.mark.slow                              # loads the real model's weights in torch
def test_gguf_loaded_model_saves_after_dropping_the_quantisation_record(tmp_path):
    from slm.export.load import load_model
    model, tok = load_model(resolve_source(None))
    forget_gguf_quantization(model)            # load_model already did; doing it twice is harmless
    model.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file()
    assert "quantization_config" not in (tmp_path / "hf" / "config.json").read_text()


@pytest.mark.parametrize("spec, message", [
    ("/no/such/model", "does not exist; accepted"),
    ("not a hub id!", "does not exist; accepted"),
])
def test_bad_sources_are_named(spec, message):
    with pytest.raises(SourceError, match=message):
        resolve_source(spec)


def test_hub_id_is_recognised_without_network():
    src = resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert src.kind == "hub" and src.name == "smollm2-135m-instruct"
