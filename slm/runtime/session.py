"""Opening an ONNX Runtime session on the best provider that really starts."""
from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort

from slm.core.errors import ProviderFallbackWarning

PROVIDERS = ("auto", "cpu", "cuda")


def open_session(model_path: Path, provider: str = "auto", threads: int | None = None):
    """Return (session, provider used, one line saying which and why).

    "auto" tries CUDA when the installed ONNX Runtime has it and falls back to the CPU, with a
    ProviderFallbackWarning; ONNX Runtime's own stack of provider errors is summarised in the line.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider {provider!r} is unknown; accepted: {', '.join(PROVIDERS)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be >= 1 (or omitted for ONNX Runtime's default)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    if provider in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        try:
            session = ort.InferenceSession(str(model_path), options,
                                           providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if session.get_providers()[0] == "CUDAExecutionProvider":
                return session, "cuda", "running on CUDA (CUDAExecutionProvider started)"
            why = "the CUDA provider did not start (no GPU or CUDA/cuDNN libraries missing)"
        except Exception as e:  # noqa: BLE001 - ORT raises plain RuntimeError/Fail for a broken CUDA set-up
            why = f"the CUDA provider failed to start ({str(e).splitlines()[0][:120]})"
        if provider == "cuda":
            raise RuntimeError(f"--provider cuda: {why}; use --provider cpu or auto")
        warnings.warn(f"{model_path.parent.name}: running on CPU: {why}", ProviderFallbackWarning, stacklevel=3)
    elif provider == "cuda":
        raise RuntimeError("--provider cuda: this ONNX Runtime has no CUDA provider; install slm[cuda] "
                           "(onnxruntime-gpu) instead of slm[cpu], or use --provider cpu")
    else:
        why = "CPU requested" if provider == "cpu" else "this ONNX Runtime build has no CUDA provider"
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session, "cpu", f"running on CPU ({why})"

