"""llama.cpp through llama-cpp-python on a GGUF file (its own environment).

speed: `Llama.generate` with temp 0 (greedy) on the prompt ids, context sized to prompt + new tokens;
kv_type: the KV cache's GGML type for keys and values (f16, the default, q8_0, q4_0: type_k/type_v),
flash_attn: llama.cpp's flash attention (which a quantized V cache requires).
quality: greedy tokens, and every position's logits (logits_all) for NLL.
prepare: requantise the shipped GGUF with llama.cpp's own quantiser (variant "Q4_0" or "Q8_0").
"""
from __future__ import annotations

import time

from common import TokenClock, main, nll


KV_TYPES = ("f16", "q8_0", "q4_0")


def _llama(path: str, threads: int, ctx: int, logits_all: bool = False, lookup: int = 0, kv_type: str = "f16",
           flash_attn: bool = False):
    import llama_cpp
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding(num_pred_tokens=lookup) if lookup else None
    # llama-cpp-python verifies drafts from its per-position scores, which need logits_all
    if kv_type not in KV_TYPES:
        raise ValueError(f"kv_type {kv_type!r} is not a llama.cpp KV type here; accepted: {', '.join(KV_TYPES)}")
    ggml = getattr(llama_cpp, f"GGML_TYPE_{kv_type.upper()}")
    return Llama(model_path=path, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                 logits_all=logits_all or bool(lookup), draft_model=draft, verbose=False, type_k=ggml, type_v=ggml,
                 flash_attn=flash_attn)


def _greedy(llm, ids: list[int], n: int, clock: TokenClock | None = None) -> list[int]:
    llm.reset()
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if clock is not None:
            clock.token(tok)
        out.append(int(tok))
        if len(out) == n:
            break
    return out


def speed(job: dict) -> dict:
    import llama_cpp

    t = time.perf_counter()
    llm = _llama(job["model"], job["threads"], job["ctx"], lookup=job.get("lookup", 0),
                 kv_type=job.get("kv_type", "f16"), flash_attn=job.get("flash_attn", False))
    load_s = time.perf_counter() - t
    _greedy(llm, [1, 2], 4)
    clock = TokenClock()
    _greedy(llm, job["ids"], job["new_tokens"], clock)
    return {**clock.result(len(job["ids"])), "load_s": load_s, "version": f"llama-cpp-python {llama_cpp.__version__}",
            "kv_type": job.get("kv_type", "f16"), "flash_attn": job.get("flash_attn", False)}


def quality(job: dict) -> dict:
    import llama_cpp

    ctx = max(len(w) for w in job["windows"] + job["prompts"]) + job["new_tokens"] + 16
    llm = _llama(job["model"], job["threads"], ctx, logits_all=True)
    tokens = [_greedy(llm, ids, job["new_tokens"]) for ids in job["prompts"]]
    nlls = []
    for ids in job["windows"]:
        llm.reset()
        llm.eval(ids)
        nlls.append([nll(llm.scores[i], ids[i + 1]) for i in range(len(ids) - 1)])
    return {"tokens": tokens, "nll": nlls, "version": f"llama-cpp-python {llama_cpp.__version__}"}


def prepare(job: dict) -> dict:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{job['variant']}")
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(job["model"].encode(), job["out"].encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return {"out": job["out"]}


if __name__ == "__main__":
    main({"speed": speed, "quality": quality, "prepare": prepare})
