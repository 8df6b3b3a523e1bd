"""Scales for a quantized KV cache, measured at export on text written for it.

    keys:   per (layer, KV head, channel) the largest |k| any rotary position can give:
            rotate-half pairs (i, i + hd/2) turn together, so |k_i| <= sqrt(k_i^2 + k_{i+hd/2}^2) at
            every position; the pair's largest norm bounds both channels wherever a token sits.
    values: per (layer, KV head, channel) the largest |v| seen.
    scale = that range / the largest code (127 for int8, 7 for int4); int4 clips the range where
    that lowers the squared error (`kv_ranges`, clip "mse"), measured in docs/LONGCTX.md.

The text: CALIBRATION_TEXT, written for this purpose (a mix of prose, dialogue, code, numbers, a list
and JSON), once plain and once through the chat template (CALIBRATION_CHAT: the template's special
tokens and a system prompt), then CORPUS, the 23 distinct BIG-Bench-Hard chain-of-thought prompt files
(MIT; data/bbh-cot-prompts/SOURCE.md): ~21,000 tokens of questions, options and worked reasoning. None
of it is evaluation data (the long-context tasks in slm/evals/longctx, the perplexity texts of
bench/kv_dtype_quality.py, the distillation tasks) or a test prompt, so scores measured with these
scales are not fitted to what they measure.

Why the corpus (docs/LONGCTX.md, "Where int8's error comes from"): the largest of CALIBRATION_TEXT's
~1,000 tokens underestimates the largest of a longer text (extremes grow with the sample): 2 x 2,048
held-out tokens exceeded its ranges in 54% (keys) and 60% (values) of SmolLM2's channels, and the
saturated codes were most of int8's error (+0.86% perplexity on the default package). With the corpus
the same int8 cache is +0.37% on SmolLM2 and -0.14% on Qwen2.5-Coder-1.5B, with no factor fitted to
the evaluation text (`kv_ranges(..., headroom)`, export.KV_HEADROOM, stays x1.0; x1.25 on top was worse
on the 1.5B). Calibrating costs one prefill of the corpus at export (~30 s for SmolLM2, ~3 min for the
1.5B on 2 cores).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from slm.core.errors import SlmError

CALIBRATION_TEXT = """\
The ferry left the harbour a little after six, while the fog still sat on the water like wet wool.
Mara stood at the rail with her coffee and counted the buoys as they slid past: red on the left going
out, green on the right, the way her grandfather had taught her. By the third buoy the engines had
settled into a steady hum and the gulls had given up following.

"Do you think the bridge will be open by the time we get back?" asked the man beside her.
"They said Thursday," she answered. "They always say Thursday."

Quarterly report, section 4. Revenue rose 12.4% year over year to $18.7 million, driven mainly by the
subscription tier (up 31%) while hardware sales fell 6%. Operating costs were flat at $9.2 million.
Headcount: 143 at the end of the quarter, against 128 a year earlier. Cash on hand: $41.0 million.

def moving_average(values: list[float], window: int) -> list[float]:
    \"\"\"The mean of each run of `window` consecutive values.\"\"\"
    if window < 1:
        raise ValueError(f"window={window} must be at least 1")
    total, out = 0.0, []
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out

Shopping list: 2 kg potatoes, a dozen eggs, olive oil, three lemons, fresh basil, parmesan, rice,
dish soap, AA batteries (x8), and something for Sunday's dessert - maybe pears?

{"id": 5521, "name": "Ada Quinn", "roles": ["admin", "editor"], "active": true,
 "last_login": "2024-03-09T17:42:05Z", "quota": {"used": 734003200, "limit": 1073741824}}

To solve 3x + 7 = 25, subtract 7 from both sides to get 3x = 18, then divide by 3: x = 6. Check:
3 * 6 + 7 = 18 + 7 = 25. For the quadratic x^2 - 5x + 6 = 0 the roots are 2 and 3, since
(x - 2)(x - 3) expands back to the original. The derivative of sin(x) * e^x is e^x (sin x + cos x).

Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. In the light-dependent
reactions, chlorophyll absorbs photons and splits water; the Calvin cycle then fixes carbon into
three-carbon sugars. Plants in hot, dry climates often use C4 or CAM pathways to lose less water.

Als wir ankamen, war der Markt schon voll: Käse, Brot, Äpfel und Blumen in allen Farben.
Nous avons pris le train de nuit pour Marseille, et le matin la mer était d'un bleu incroyable.
Llegamos tarde, pero la cena todavía estaba caliente y nadie se quejó.

SELECT customer_id, COUNT(*) AS orders, SUM(total) AS spent
FROM orders WHERE created_at >= '2024-01-01'
GROUP BY customer_id HAVING COUNT(*) > 3 ORDER BY spent DESC LIMIT 20;

Step 1: unplug the router. Step 2: wait thirty seconds. Step 3: plug it back in and wait until the
light turns solid white. Step 4: if it still blinks orange, hold the reset button for ten seconds.

The committee met on the 14th and, after a long and occasionally heated discussion, voted 7 to 2 to
postpone the decision until the engineering review is complete. Minutes will be circulated by Friday.
"""

CALIBRATION_CHAT = [
    {"role": "system", "content": "You are a careful assistant. Answer briefly and say when you are unsure."},
    {"role": "user", "content": "My sourdough starter smells like nail polish remover. Is it ruined?"},
    {"role": "assistant", "content": "No. That smell is acetone-like by-products of a hungry starter. "
                                     "Discard most of it and feed it twice a day for a couple of days."},
    {"role": "user", "content": "How many grams of flour and water should I use for each feed?"},
]


CORPUS = Path(__file__).parent / "data" / "bbh-cot-prompts"


def calibration_texts() -> list[str]:
    """CALIBRATION_TEXT, then each file of CORPUS in name order."""
    files = sorted(CORPUS.glob("*.txt"))
    if not files:
        raise SlmError(f"the KV calibration corpus is missing: no .txt files in {CORPUS} (a broken install? "
                       "reinstall slm)")
    return [CALIBRATION_TEXT] + [f.read_text(encoding="utf-8") for f in files]


def calibration_ids(encode: Callable[[str], list[int]],
                    encode_chat: Callable[[list[dict]], list[int]] | None = None) -> list[list[int]]:
    """The calibration texts as token ids, `encode`d as plain text, and CALIBRATION_CHAT through
    `encode_chat` (the chat template, with the generation prompt) when the model has one."""
    texts = [list(encode(t)) for t in calibration_texts()]
    if encode_chat is not None:
        texts.insert(1, list(encode_chat(CALIBRATION_CHAT)))
    return texts


def measure_kv(model_file: Path, kv: dict, dims, texts: list[list[int]], io,
               max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the fp32-cache graph on each text; return every token's key pair norms (num_layers,
    num_kv_heads, tokens, head_dim/2) (rotate-half pairs: what a key is at any position) and values
    (num_layers, num_kv_heads, tokens, head_dim). `dims`: anything with num_layers, num_kv_heads and
    head_dim (export's Spec); a text longer than `max_len` tokens runs in pieces."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SlmError("calibrating the int8/int4 KV cache scales runs the exported graph on ONNX Runtime, which "
                       "is not installed: pip install 'slm[cpu,export]' (or 'slm[cuda,export]'); an fp16 export "
                       "(--quant fp16) needs none") from None

    L, H, D = dims.num_layers, dims.num_kv_heads, dims.head_dim
    norms, vals = [], []
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    pieces = [ids[i:i + max_len] for ids in texts for i in range(0, len(ids), max_len)]   # within the rotary table
    for ids in pieces:
        n = len(ids)
        keys = [np.zeros((1, H, n, D), np.float32) for _ in range(L)]
        values = [np.zeros((1, H, n, D), np.float32) for _ in range(L)]
        b = session.io_binding()
        b.bind_cpu_input(io.input_ids, np.array([ids], np.int64))
        b.bind_cpu_input(io.position_ids, np.arange(n, dtype=np.int64)[None])
        b.bind_cpu_input(io.seqlens_k, np.array([n - 1], np.int32))
        b.bind_cpu_input(io.total_sequence_length, np.array(n, np.int32))
        b.bind_cpu_input(io.num_logits_to_keep, np.array(1, np.int64))
        for i in range(L):
            for names, bufs in ((("past_key", "present_key"), keys), (("past_value", "present_value"), values)):
                ov = ort.OrtValue.ortvalue_from_numpy(bufs[i])
                b.bind_ortvalue_input(kv[names[0]][i], ov)
                b.bind_ortvalue_output(kv[names[1]][i], ov)
        b.bind_output(io.logits)
        session.run_with_iobinding(b)
        k = np.concatenate(keys)[:, :, :, :]                                   # (L, H, n, D)
        norms.append(np.sqrt(k[..., :D // 2] ** 2 + k[..., D // 2:] ** 2))
        vals.append(np.concatenate(values))
    return np.concatenate(norms, axis=2), np.concatenate(vals, axis=2)


CLIP_RATIOS = np.linspace(0.3, 1.0, 15)
HEADROOM = 1.5          # the measured alternative for int8's absmax ranges (module docstring)


def kv_ranges(key_norms: np.ndarray, values: np.ndarray, qmax: int, clip: str,
              headroom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per (layer, KV head, channel) ranges for keys and values, (L, H, D) each.

    clip "absmax": the largest magnitude (a key's pair norm, so every position fits) x `headroom`,
    so text whose extremes pass the calibration text's saturates less.
    clip "mse": the fraction of it (CLIP_RATIOS) with the least squared error once quantized to
    [-qmax - 1, qmax]; keys are sampled at uniformly random rotary phases, as a key at an unknown
    position is; a few clipped outliers buy finer steps for all the rest.
    """
    phase = np.random.default_rng(0).uniform(0, 2 * np.pi, key_norms.shape)
    keys = np.concatenate([key_norms * np.cos(phase), key_norms * np.sin(phase)], -1)     # (L, H, N, D)
    k_abs = np.concatenate([key_norms.max(2)] * 2, -1)
    ranges = []
    for x, top in ((keys, k_abs), (values, np.abs(values).max(2))):
        top = np.maximum(top, 1e-6)
        if clip == "absmax":
            ranges.append((headroom * top).astype(np.float32))
            continue
        errors = []
        for r in CLIP_RATIOS:
            s = (r * top / qmax)[:, :, None]
            errors.append(((np.clip(np.rint(x / s), -qmax - 1, qmax) * s - x) ** 2).mean(2))
        best = CLIP_RATIOS[np.argmin(np.stack(errors), axis=0)]
        ranges.append((best * top).astype(np.float32))
    return ranges[0], ranges[1]


def write_scales(path: Path, k_range: np.ndarray, v_range: np.ndarray, qmax: int) -> None:
    """Scales = range / qmax (a zero range keeps a tiny scale, so codes stay finite)."""
    np.savez(path, key=(np.maximum(k_range, 1e-6) / qmax).astype(np.float32),
             value=(np.maximum(v_range, 1e-6) / qmax).astype(np.float32))
