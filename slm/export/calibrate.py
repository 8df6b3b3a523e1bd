"""Outlier channels of the activations that feed int8-quantised MatMulNBits inputs.

With accuracy_level 4, ONNX Runtime quantises each block of 32 activations to int8 with the block's
largest magnitude as its scale. A few hidden channels of every LLM carry activations tens of times
larger than the rest ("massive activations"; LLM.int8(), Dettmers et al. 2022): the other 31 values
of their block keep only a few bits. Those channels are the same for every input, so they are found
once at export on calibration text: the norm before the projection (for the down projection, whose
input is act(gate) * up, up's own output rows) scales them down to ordinary magnitudes and an exact
fp32 path adds back the rest (LLM.int8()'s mixed-precision decomposition; see
slm.export.graph.linear_with_outliers), so the int8 kernel's blocks keep their precision.

    outliers = activation_outliers(model, tokenizer, max_channels=8)
    # {"model.layers.3.attn_in": Outliers(channels=array([31, 129]), alpha=array([0.21, 0.08])),
    #  "model.layers.3.mlp_in": ..., "model.layers.3.down_in": ..., "head_in": ...}

The calibration text below is written for this purpose: it is neither evaluation data (Tiny
Shakespeare, LongEval, the distillation tasks) nor a test prompt, and mixes prose, code, a list and
a chat turn so that the channels seen are those of ordinary use.
"""
from __future__ import annotations

import numpy as np

from slm.export.graph import Outliers

CALIBRATION_TEXT = """\
The new library opened on the corner of Elm Street last spring. Its reading room faces the river, and on
weekday mornings the long oak tables fill with students, retired engineers and a few people who come only
for the newspapers. The city paid for the building; a local bakery donated the coffee machine.

def moving_average(values, window=3):
    out = []
    for i in range(len(values) - window + 1):
        out.append(sum(values[i:i + window]) / window)
    return out

Shopping list: 2 kg of potatoes, a dozen eggs, olive oil, 500 g of flour, lemons (4), and basil.
In 1969 the first crewed landing on the Moon took place; the mission lasted eight days.
"""
CALIBRATION_CHAT = [
    {"role": "user", "content": "How do I keep basil fresh for a week?"},
    {"role": "assistant", "content": "Trim the stems, stand them in a glass of water like flowers, and keep the "
                                     "glass on the counter away from direct sun. Change the water every two days."},
]
RATIO = 6.0          # a channel is an outlier when its largest |activation| is this many times the median channel's
MAX_TOKENS = 384
SCALED_TO = 0.25     # an outlier channel is scaled to this fraction of the median channel's amax


def calibration_ids(tokenizer) -> list[list[int]]:
    """The calibration text, and the chat turn through the model's own chat template when it has one."""
    seqs = [tokenizer(CALIBRATION_TEXT).input_ids[:MAX_TOKENS]]
    if getattr(tokenizer, "chat_template", None):
        chat = tokenizer.apply_chat_template(CALIBRATION_CHAT, tokenize=True, return_dict=True)["input_ids"]
        seqs.append(list(chat)[:MAX_TOKENS])
    return seqs


def _input_of(module_name: str) -> str | None:
    """The graph input a linear layer reads: q/k/v share the attention norm, gate/up the MLP norm."""
    name = module_name.replace("model.language_model.", "model.")
    if name == "lm_head":
        return "head_in"
    for suffix, key in ((".self_attn.q_proj", "attn_in"), (".mlp.gate_proj", "mlp_in"), (".mlp.down_proj", "down_in")):
        if name.endswith(suffix):
            return name[: -len(suffix)] + "." + key
    return None


def _calibrate(model, tokenizer, hooks: dict) -> None:
    """Run the calibration text through `model` with a forward pre-hook on each named module."""
    import torch

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_pre_hook(h) for name, h in hooks.items()]
    try:
        with torch.no_grad():
            for ids in calibration_ids(tokenizer):
                model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()


def activation_outliers(model, tokenizer, max_channels: int) -> dict[str, Outliers]:
    """Per quantised input (each layer's attention, MLP and down-projection input, and the head's): the channels whose
    calibration amax is at least RATIO times the median channel's, largest first, at most max_channels;
    each scaled by alpha down to a quarter of the median channel's amax."""
    amax: dict[str, np.ndarray] = {}

    def hook(key):
        def record(_module, inputs):
            x = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).amax(0).numpy()
            amax[key] = np.maximum(amax[key], x) if key in amax else x
        return record

    _calibrate(model, tokenizer, {name: hook(key) for name, _ in model.named_modules()
                                  if (key := _input_of(name)) is not None})
    out = {}
    for key, a in amax.items():
        order = np.argsort(a)[::-1]
        top = order[:max_channels]
        chosen = top[a[top] >= RATIO * max(float(np.median(a)), 1e-12)]
        if chosen.size:
            # scaled to a quarter of the median channel: below any block's own scale even when an input
            # is several times larger than calibration saw (the remainder is exact whatever alpha is)
            target = SCALED_TO * float(np.median(a))
            chosen = np.sort(chosen)
            out[key] = Outliers(channels=chosen.astype(np.int64),
                                alpha=np.minimum(1.0, target / a[chosen]).astype(np.float32))
    return out


def input_importance(model, tokenizer) -> dict[str, np.ndarray]:
    """Per linear layer (its weight's name), the mean square of each input channel over the calibration
    text: how much an error in that column of the weight moves the output (llama.cpp's importance
    matrix, on a few hundred tokens). The re-quantising fit (slm.export.quantize.quantize_fit) weighs by it."""
    import torch

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(_module, inputs):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sq = (x * x).sum(0).numpy().astype(np.float64)
            sums[name] = sums[name] + sq if name in sums else sq
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    _calibrate(model, tokenizer, {name: hook(name.replace("model.language_model.", "model.") + ".weight")
                                  for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    return {name: (sums[name] / counts[name]).astype(np.float32) for name in sums}

