"""Replay int8 activation rounding (one scale per block of 32, as MatMulNBits' accuracy_level 4) on the
real activations of SmolLM2's projections, with the top k channels of each input taken out of int8:
the relative RMS error of x @ W.T, per input. The numpy experiment behind slm/export/calibrate.py.

    python bench/outlier_replay.py
"""
import numpy as np, torch
from slm.export.load import load_model
from slm.core.sources import resolve_source
src = resolve_source(None); model, tok = load_model(src)
text = "The committee met on Tuesday to review the budget for the new library. After a long discussion about costs, staffing and opening hours, they agreed to ask the city for more funds and to open the doors in the spring. " * 3
ids = tok(text, return_tensors="pt").input_ids[:, :128]
caps = {}
def hook(name):
    def f(mod, inp): caps.setdefault(name, []).append(inp[0].detach()[0].numpy())
    return f
for i, layer in enumerate(model.model.layers):
    for n in ("q_proj", "o_proj"): getattr(layer.self_attn, n).register_forward_pre_hook(hook(f"{i}.{n}"))
    for n in ("gate_proj", "down_proj"): getattr(layer.mlp, n).register_forward_pre_hook(hook(f"{i}.{n}"))
model.lm_head.register_forward_pre_hook(hook("head"))
with torch.no_grad(): model(ids)
def qerr(x, drop):
    x = x.copy(); x[:, drop] = 0
    b = x.reshape(x.shape[0], -1, 32); s = np.abs(b).max(-1, keepdims=True) / 127; s[s == 0] = 1
    return (np.rint(b / s) * s).reshape(x.shape) - x
for name in ["0.q_proj", "5.q_proj", "15.q_proj", "29.q_proj", "5.gate_proj", "15.gate_proj", "5.down_proj", "15.down_proj", "15.o_proj", "head"]:
    x = caps[name][0].astype(np.float64)
    amax = np.abs(x).max(0); order = np.argsort(amax)[::-1]
    w = dict(model.named_parameters())
    W = (w[f"model.layers.{name.split('.')[0]}.{'self_attn' if 'proj' in name and name.split('.')[1] in ('q_proj','o_proj') else 'mlp'}.{name.split('.')[1]}.weight"] if name != "head" else model.lm_head.weight).detach().numpy().astype(np.float64)
    ref = x @ W.T
    row = []
    for k in (0, 2, 4, 8):
        drop = order[:k]
        e = qerr(x, drop) @ W.T       # the outlier channels go exactly through fp32
        row.append(f"k={k}: {np.sqrt((e**2).mean())/np.sqrt((ref**2).mean()):.2e}")
    print(f"{name:14s} amax top {np.round(amax[order[:4]],1)} median {np.median(amax):.2f} | " + "  ".join(row))
