"""onnxruntime-genai on a folder made by its own model builder (its own environment).

speed: append the prompt ids, then `generate_next_token` until max_length = prompt + new tokens
(min_length = max_length, so end-of-sequence does not stop it); its KV buffer is sized to max_length.
quality: greedy tokens, and logits one token at a time for NLL.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

from common import TokenClock, main, nll


def _model(path: str, threads: int):
    import onnxruntime_genai as og

    config = og.Config(path)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                         "inter_op_num_threads": 1}}}}))
    return og.Model(config)


def _generator(model, total: int):
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    return og.Generator(model, params)


def speed(job: dict) -> dict:
    import onnxruntime_genai as og

    t = time.perf_counter()
    model = _model(job["model"], job["threads"])
    load_s = time.perf_counter() - t
    warm = _generator(model, 6)
    warm.append_tokens([1, 2])
    while not warm.is_done():
        warm.generate_next_token()
    del warm
    ids = job["ids"]
    gen = _generator(model, len(ids) + job["new_tokens"])
    clock = TokenClock()
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
        clock.token(gen.get_next_tokens()[0])
    return {**clock.result(len(ids)), "load_s": load_s, "version": f"onnxruntime-genai {og.__version__}"}


def quality(job: dict) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    model = _model(job["model"], job["threads"])
    tokens = []
    for ids in job["prompts"]:
        gen = _generator(model, len(ids) + job["new_tokens"])
        gen.append_tokens(ids)
        out = []
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        tokens.append(out)
    nlls = []
    for ids in job["windows"]:          # teacher forcing, one token at a time
        gen = _generator(model, len(ids) + 1)
        row = []
        for i, tok in enumerate(ids[:-1]):
            gen.append_tokens([tok])
            row.append(nll(np.asarray(gen.get_logits())[0, -1], ids[i + 1]))
        nlls.append(row)
    return {"tokens": tokens, "nll": nlls, "version": f"onnxruntime-genai {og.__version__}"}


# onnxruntime-genai 0.18's builder needs transformers 5, whose configs keep rope_theta only inside
# rope_parameters; the builder asks hasattr(config, "rope_theta") and silently falls back to 10,000
# (SmolLM2 uses 100,000). The shim gives the config class the attribute back for the builder's run.
_BUILDER = """
import runpy, sys, transformers
from transformers import PretrainedConfig
if not hasattr(PretrainedConfig, "rope_theta"):
    PretrainedConfig.rope_theta = property(lambda self: (getattr(self, "rope_parameters", None) or {})["rope_theta"])
sys.argv = ["builder"] + sys.argv[1:]
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
"""


def prepare(job: dict) -> dict:
    """Its model builder on the HF folder: variant "int4" or "fp32", CPU."""
    proc = subprocess.run([sys.executable, "-c", _BUILDER, "-i", job["model"], "-o", job["out"], "-p", job["variant"],
                           "-e", "cpu", "-c", job["out"] + ".cache"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return {"out": job["out"]}


if __name__ == "__main__":
    main({"speed": speed, "quality": quality, "prepare": prepare})
