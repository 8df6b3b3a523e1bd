"""Provider choice: a CUDA provider that is installed but does not start falls back to the CPU, and
a library user is told so through `warnings` (the CLI and the chat print the engine's note instead)."""
from __future__ import annotations

import warnings

import onnxruntime as ort
import pytest

from slm.runtime import Engine
from slm.runtime.session import open_session
from slm.core.errors import ProviderFallbackWarning


class CudaThatFails:
    """ort.InferenceSession, except that asking for CUDA raises as a broken CUDA set-up does."""

    def __init__(self, real):
        self.real = real

    def __call__(self, path, options=None, providers=()):
        if "CUDAExecutionProvider" in providers:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return self.real(path, options, providers=providers)


@pytest.fixture
def broken_cuda(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", CudaThatFails(ort.InferenceSession))


def test_auto_falls_back_to_cpu_with_a_warning(tiny_package, broken_cuda):
    with pytest.warns(ProviderFallbackWarning, match="running on CPU: the CUDA provider failed to start "
                                                     r"\(CUDA failure 100: no CUDA-capable device"):
        engine = Engine(tiny_package, threads=1)
    assert engine.provider == "cpu" and "failed to start" in engine.provider_note
    with pytest.raises(RuntimeError, match="--provider cuda: the CUDA provider failed to start"):
        open_session(tiny_package / "model.onnx", "cuda", 1)


def test_asking_for_the_cpu_warns_nothing(tiny_package, broken_cuda):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_session(tiny_package / "model.onnx", "cpu", 1)[1] == "cpu"


def test_the_cli_prints_the_note_once_not_the_warning(tiny_package, broken_cuda, capsys):
    from slm.cli.main import main
    assert main(["generate", "hi", "--model", str(tiny_package), "--raw", "--max-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("the CUDA provider failed to start") == 1 and "ProviderFallbackWarning" not in err
