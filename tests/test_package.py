"""The package contract: what export writes is what the runtime reads; bad packages give one clear error."""
import json
import shutil

import pytest

from slm.runtime import Engine
from slm.core.errors import PackageError
from slm.core.package import FORMAT_VERSION, read_manifest


def test_manifest_round_trip(tiny_package):
    m = read_manifest(tiny_package)
    assert m.format_version == FORMAT_VERSION
    assert m.architecture == "llama"
    assert len(m.kv.past_key) == m.dims.num_layers == 2
    assert m.kv.bytes_per_token(m.dims) == 2 * 2 * 2 * 16 * 4
    assert m.chat_template and "<|im_start|>" in m.chat_template
    assert 2 in m.eos_token_ids


def _copy(tiny_package, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(tiny_package, dst)
    return dst


@pytest.mark.parametrize("corrupt, message", [
    (lambda p: (p / "manifest.json").unlink(), "has no manifest.json"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "manifest.json").write_text("[]"), "expected a JSON object"),
    (lambda p: _edit(p, format_version=99), "format_version 99 is not supported"),
    (lambda p: _edit(p, architecture="gpt2"), "architecture 'gpt2' is unknown; accepted: llama, gemma3"),
    (lambda p: _edit(p, dims={"vocab_size": 3}), "missing or has a wrong field"),
    (lambda p: (p / "model.onnx").unlink(), "lacks 'model.onnx'"),
    (lambda p: (p / "model.onnx").write_bytes(b"garbage" * 100), "re-export it"),
    (lambda p: (p / "tokenizer.json").write_text("{}"), "is not a tokenizers file"),
])
def test_corrupt_package_is_named(tiny_package, tmp_path, corrupt, message):
    pkg = _copy(tiny_package, tmp_path)
    corrupt(pkg)
    with pytest.raises(PackageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Engine(pkg, threads=1)


def test_missing_folder(tmp_path):
    with pytest.raises(PackageError, match="is not a folder"):
        read_manifest(tmp_path / "nope")


def _edit(pkg, **changes):
    d = json.loads((pkg / "manifest.json").read_text())
    d.update(changes)
    (pkg / "manifest.json").write_text(json.dumps(d))


@pytest.mark.parametrize("kind, quant, expected", [("gguf", None, "int8"), ("gguf", "int4", "int4"), ("hf", None, "int4")])
def test_students_of_a_quantised_gguf_export_at_int8_by_default(tmp_path, smollm2_tokenizer, capsys, kind, quant, expected):
    """A `slm distill train` folder whose record says it started from a GGUF: int4 would round the
    fine-tune back toward the base (docs/DISTILL.md), so the default is int8 and an explicit int4 warns."""
    from slm.export import build_package
    from slm.core.sources import Source
    from tests.conftest import tiny_llama

    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "training_record.json").write_text(json.dumps({"student_source": {"kind": kind, "path": "/m/base"}}))
    manifest = build_package(Source("hf", str(folder), "student"), tmp_path / "pkg", quant=quant,
                             model=tiny_llama(), tokenizer=smollm2_tokenizer, attention_stats=False)
    assert manifest.quant.mode == expected
    err = capsys.readouterr().err
    assert ("quantised GGUF '/m/base'" in err) == (kind == "gguf")
    assert ("warning:" in err) == (quant == "int4")
