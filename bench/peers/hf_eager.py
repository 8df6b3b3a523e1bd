"""transformers, eager attention, fp32 on the CPU (main environment): the reference implementation.

speed: `generate` (greedy, min_new_tokens = max_new_tokens) timed through a streamer.
quality: greedy tokens, and one forward over each window for NLL.
"""
from __future__ import annotations

import time

from common import TokenClock, main, nll


class ClockStreamer:
    """transformers streamer: the first `put` is the prompt, every later one a new token."""

    def __init__(self, clock: TokenClock):
        self.clock, self.prompt_seen = clock, False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.clock.token(int(value.reshape(-1)[-1]))

    def end(self) -> None:
        pass


def timed_generate(model, ids: list[int], new_tokens: int) -> dict:
    import torch

    x = torch.tensor([ids])
    model.generate(torch.tensor([[1, 2]]), max_new_tokens=4, do_sample=False)      # warm-up
    clock = TokenClock()
    model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, streamer=ClockStreamer(clock))
    return clock.result(len(ids))


def greedy_and_nll(model, job: dict) -> dict:
    import torch

    tokens, nlls = [], []
    with torch.inference_mode():
        for ids in job["prompts"]:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=job["new_tokens"],
                               min_new_tokens=job["new_tokens"], do_sample=False)
            tokens.append([int(t) for t in y[0, len(ids):]])
        for ids in job["windows"]:
            x = torch.tensor([ids])
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy()
            nlls.append([nll(logits[i], ids[i + 1]) for i in range(len(ids) - 1)])
    return {"tokens": tokens, "nll": nlls}


def _model(job: dict):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(job["threads"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def speed(job: dict) -> dict:
    import torch
    import transformers

    t = time.perf_counter()
    model = _model(job)
    load_s = time.perf_counter() - t
    with torch.inference_mode():
        res = timed_generate(model, job["ids"], job["new_tokens"])
    return {**res, "load_s": load_s, "version": f"transformers {transformers.__version__}, torch {torch.__version__}"}


def quality(job: dict) -> dict:
    import torch
    import transformers

    return {**greedy_and_nll(_model(job), job), "version": f"transformers {transformers.__version__}, torch {torch.__version__}"}


if __name__ == "__main__":
    main({"speed": speed, "quality": quality})
