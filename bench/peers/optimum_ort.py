"""Optimum ONNX: its fp32 export with past key values, run by ORTModelForCausalLM (its own environment,
as optimum-onnx 0.1 needs transformers < 4.58). Timed and scored exactly like hf_eager.
"""
from __future__ import annotations

import time

from common import main
from hf_eager import greedy_and_nll, timed_generate


def _model(job: dict):
    import onnxruntime
    from optimum.onnxruntime import ORTModelForCausalLM

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = job["threads"]
    options.inter_op_num_threads = 1
    return ORTModelForCausalLM.from_pretrained(job["model"], session_options=options, provider="CPUExecutionProvider")


def _version() -> str:
    import importlib.metadata as md
    return f"optimum-onnx {md.version('optimum-onnx')}, onnxruntime {md.version('onnxruntime')}, transformers {md.version('transformers')}"


def speed(job: dict) -> dict:
    import torch

    t = time.perf_counter()
    model = _model(job)
    load_s = time.perf_counter() - t
    torch.set_num_threads(job["threads"])
    with torch.inference_mode():
        res = timed_generate(model, job["ids"], job["new_tokens"])
    return {**res, "load_s": load_s, "version": _version()}


def quality(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    return {**greedy_and_nll(_model(job), job), "version": _version()}


def prepare(job: dict) -> dict:
    """optimum's ONNX export of the HF folder (fp32, text generation with past key values)."""
    from optimum.exporters.onnx import main_export

    main_export(job["model"], output=job["out"], task="text-generation-with-past", device="cpu")
    return {"out": job["out"]}


if __name__ == "__main__":
    main({"speed": speed, "quality": quality, "prepare": prepare})
