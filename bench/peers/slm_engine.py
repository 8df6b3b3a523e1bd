"""slm's own engine on a package folder (main environment).

speed: `Engine.generate` on the prompt as raw text, the KV budget sized to prompt + new tokens, the
KV cache at the job's kv_dtype (default the package's).
quality: `Engine.prefill` / `Engine.decode_step` on token ids (greedy, and one token at a time for NLL).
"""
from __future__ import annotations

import time

from common import TokenClock, main  # noqa: E402


def speed(job: dict) -> dict:
    from slm.runtime import Engine
    import onnxruntime

    t = time.perf_counter()
    engine = Engine(job["model"], threads=job["threads"], kv_budget=job["ctx"], lookup=job.get("lookup", 0),
                    kv_dtype=job.get("kv_dtype"))
    load_s = time.perf_counter() - t
    prompt = engine.tokenizer.decode(job["ids"], skip_special_tokens=False)
    list(engine.generate("warm up", raw=True, max_tokens=4, cache=engine.new_cache()))
    clock = TokenClock()
    for event in engine.generate(prompt, raw=True, max_tokens=job["new_tokens"], ignore_eos=True, cache=engine.new_cache()):
        clock.token(event.token)
    res = clock.result(event.prompt_tokens)
    return {**res, "load_s": load_s, "version": f"slm + onnxruntime {onnxruntime.__version__}",
            "quant": engine.manifest.quant.mode, "kv_budget": engine.capacity, "kv_dtype": engine.kv_dtype}


def quality(job: dict) -> dict:
    import onnxruntime

    from slm.runtime import Engine
    from slm.runtime.decoding import greedy, log_probs

    engine = Engine(job["model"], threads=job["threads"])
    tokens = []
    for ids in job["prompts"]:
        cache = engine.new_cache(len(ids) + job["new_tokens"] + 16)
        tokens.append(greedy(engine, cache, engine.prefill(cache, ids), job["new_tokens"]))
    nlls = []
    for ids in job["windows"]:          # teacher forcing, one token at a time
        cache = engine.new_cache(len(ids) + 16)
        nlls.append((-log_probs(engine, cache, engine.prefill(cache, ids[:1]), ids[1:])).tolist())
    return {"tokens": tokens, "nll": nlls, "version": f"slm + onnxruntime {onnxruntime.__version__}"}


def prepare(job: dict) -> dict:
    """Export a package: variant is QUANT[:accuracy_level], e.g. "gguf:0", "int4:4", "int8", "fp32";
    max_positions: the rotary table's length (default the exporter's)."""
    from slm.export import build_package
    from slm.core.sources import resolve_source

    quant, _, level = job["variant"].partition(":")
    build_package(resolve_source(job["model"]), job["out"], quant=quant, accuracy_level=int(level or 4),
                  head_topk=job.get("head_topk", 0), max_positions=job.get("max_positions"))
    return {"out": job["out"]}


if __name__ == "__main__":
    main({"speed": speed, "quality": quality, "prepare": prepare})
