"""OpenVINO GenAI on an OpenVINO IR folder made by optimum-intel's export from the HF folder (its own environment).

    python3 -m venv .bench-venvs/openvino
    .bench-venvs/openvino/bin/pip install "torch==2.13.0" openvino-genai "optimum-intel[openvino]" nncf
    .bench-venvs/openvino/bin/pip uninstall -y torchvision   # pulled in at a release built for another torch;
                                                             # its import breaks transformers' (the export needs none)

prepare: `optimum-cli export openvino --model HF --task text-generation-with-past --weight-format int4 OUT`
(NNCF data-free weight compression). With no other option optimum-intel applies its default int4 config
(`_DEFAULT_4BIT_WQ_CONFIG`): asymmetric int4, group size 128, ratio 1.0 (every eligible MatMul at 4 bits),
the embedding and the last MatMul (the head) at the backup precision int8_asym. A layer whose input
channels 128 does not divide makes the export fail (`--group-size-fallback error`, the default); the job's
`args` add options such as `--group-size-fallback adjust` (that layer gets the largest power of two
dividing its channels). The options in force are read back from the rt_info NNCF writes into the IR.
speed: `LLMPipeline(OUT, "CPU", INFERENCE_NUM_THREADS=threads)`, the prompt ids in as a tensor (no
chat template, no tokenizer), greedy, `max_new_tokens = min_new_tokens = new tokens` and `ignore_eos`
(end-of-sequence cannot stop it); each token's time from a streamer (`StreamerBase.write`), OpenVINO's
own TTFT and TPOT (perf_metrics) beside them. Every other setting is the CPU plugin's default, which
the result records (on an AVX-512 BF16 host: bf16 inference precision, u8 KV cache, int8 dynamic
quantisation of activations in groups of 32).
quality: greedy tokens from the pipeline. The pipeline returns no logits, so NLL runs the same IR
through OpenVINO's CPU plugin directly (same properties): one call per window, logits at every position.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from common import TokenClock, main, nll

DEFAULTS = ("KV_CACHE_PRECISION", "INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "PERFORMANCE_HINT")


def _properties(threads: int) -> dict:
    return {"INFERENCE_NUM_THREADS": threads}


def _version() -> str:
    """Versions, and the CPU plugin defaults this run used (none of them is set by the peer)."""
    import openvino as ov
    import openvino_genai as og

    def name(value) -> str:         # an element type prints as "<Type: 'uint8_t'>", a hint as "PerformanceMode.LATENCY"
        return value.get_type_name() if hasattr(value, "get_type_name") else str(getattr(value, "name", value))

    core = ov.Core()
    plugin = ", ".join(f"{p} {name(core.get_property('CPU', p))}" for p in DEFAULTS)
    return f"openvino-genai {og.__version__}, openvino {ov.__version__.split('-')[0]}; CPU defaults: {plugin}"


def _pipeline(path: str, threads: int):
    import openvino_genai as og
    return og.LLMPipeline(path, "CPU", **_properties(threads))


def _config(pipe, n: int):
    config = pipe.get_generation_config()
    config.do_sample = False
    config.num_beams = 1
    config.repetition_penalty = 1.0
    config.max_new_tokens = n
    config.min_new_tokens = n
    config.ignore_eos = True
    return config


def _streamer(clock: TokenClock):
    import openvino_genai as og

    class Clocked(og.StreamerBase):
        def write(self, token):
            for t in token if isinstance(token, (list, tuple)) else [token]:
                clock.token(t)
            return og.StreamingStatus.RUNNING

        def end(self):
            pass

    return Clocked()


def _ids(ids: list[int]):
    import numpy as np
    import openvino as ov
    return ov.Tensor(np.asarray([ids], np.int64))


def speed(job: dict) -> dict:
    t = time.perf_counter()
    pipe = _pipeline(job["model"], job["threads"])
    load_s = time.perf_counter() - t
    pipe.generate(_ids([1, 2]), _config(pipe, 4))
    ids, n = job["ids"], job["new_tokens"]
    config = _config(pipe, n)
    clock = TokenClock()
    out = pipe.generate(_ids(ids), config, _streamer(clock))
    tokens = [int(x) for x in out.tokens[0]]
    if tokens != clock.tokens:
        raise RuntimeError(f"the streamer saw {len(clock.tokens)} tokens, the result holds {len(tokens)}")
    pm = out.perf_metrics
    return {**clock.result(len(ids)), "load_s": load_s, "ov_ttft_s": pm.get_ttft().mean / 1000,
            "ov_tpot_s": pm.get_tpot().mean / 1000, "version": _version()}


def _window_nll(compiled, ids: list[int]) -> list[float]:
    """Teacher forcing over one window in one call of the stateful IR (its KV state reset first)."""
    import numpy as np

    request = compiled.create_infer_request()
    request.reset_state()
    names = {i.get_any_name() for i in compiled.inputs}
    feed = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
    if "position_ids" in names:
        feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
    if "beam_idx" in names:
        feed["beam_idx"] = np.zeros(1, np.int32)
    logits = request.infer(feed)[compiled.output("logits")]        # (1, T, vocab)
    if logits.shape[1] != len(ids):
        raise RuntimeError(f"the IR gives logits for {logits.shape[1]} of {len(ids)} positions")
    return [nll(logits[0, i], ids[i + 1]) for i in range(len(ids) - 1)]


def quality(job: dict) -> dict:
    import openvino as ov

    pipe = _pipeline(job["model"], job["threads"])
    tokens = [[int(x) for x in pipe.generate(_ids(ids), _config(pipe, job["new_tokens"])).tokens[0]]
              for ids in job["prompts"]]
    del pipe
    compiled = ov.Core().compile_model(str(Path(job["model"]) / "openvino_model.xml"), "CPU", _properties(job["threads"]))
    nlls = [_window_nll(compiled, ids) for ids in job["windows"]]
    return {"tokens": tokens, "nll": nlls, "version": _version()}


def prepare(job: dict) -> dict:
    """optimum-intel's export of the HF folder to OpenVINO IR, weights compressed by NNCF (variant "int4")."""
    cli = Path(sys.executable).parent / "optimum-cli"
    cmd = [str(cli), "export", "openvino", "--model", job["model"], "--task", "text-generation-with-past",
           "--weight-format", job["variant"], *job.get("args", []), job["out"]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1])
    return {"out": job["out"], "command": " ".join(cmd[1:]), "weight_compression": compression(job["out"])}


def compression(folder: str) -> dict:
    """The options NNCF compressed the weights with, as it recorded them in the IR's rt_info."""
    import xml.etree.ElementTree as ET

    node = ET.parse(Path(folder) / "openvino_model.xml").getroot().find("rt_info/nncf/weight_compression")
    if node is None:
        raise RuntimeError(f"{folder}/openvino_model.xml records no NNCF weight compression")
    return {c.tag: c.get("value") for c in node if c.tag != "advanced_parameters"}


if __name__ == "__main__":
    main({"speed": speed, "quality": quality, "prepare": prepare})
