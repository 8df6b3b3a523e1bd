"""A MEGABYTE checkpoint folder (slm/megabyte/train.py: config.json + model.safetensors) -> a byte package:

    model.onnx   the global decoder, once per patch, KV cache over patches (model_attn.onnx: the same
                 plus each layer's attention mass per slot, for the attention-reading KV policies):

        patch_ids (B, S, P) ─► + slot offsets ─► Gather(patch table) ─► (B, S, P*e)
          ─► [block] x Lg (GroupQueryAttention, past/present KV in one shared buffer, one slot per patch)
          ─► RMSNorm ─► last `keep` patches ─► (B, keep, P, e) ─► w_GL ─► local_context (B, keep, P, D)

    local.onnx   the local decoder, once per byte, its own cache of P slots (reset every patch):

        context (B, S, D) + Gather(local table, input_ids = the previous bytes, pad first)
          ─► [block] x Ll (GroupQueryAttention, positions within the patch) ─► RMSNorm ─► head ─► logits (B, S, 256)

    block: x ─► RMSNorm ─► QKV ─► GQA(rotary) ─► o ─► + ─► RMSNorm ─► gate/up ─► silu(gate)*up ─► down ─► +

The local model keeps a cache rather than recomputing the patch: with P = 8 a recomputation costs
up to 8 positions per byte, the cache one, and the graph is the same GroupQueryAttention block as the
global one. Weights stay fp32 (a few MB; MatMulNBits would save little and cost parity).

Also `export_flat`: the flat byte-level baseline as a plain llama package with a 256-token byte
tokenizer, so it runs on the token Engine unchanged (for the comparison in docs/MEGABYTE.md).

    python -m slm.export.megabyte CHECKPOINT OUT
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from slm.export.graph import IR_VERSION, MS, OPSET, Graph, linear, rms_norm
from slm.core.errors import SourceError
from slm.core.package import (Dimensions, GraphIO, KVLayout, Manifest, Patches, Quantization, Rope, read_manifest,
                         write_manifest)

BYTES, PAD = 256, 256
LOCAL_MODEL = "local.onnx"
ATTENTION_MODEL = "model_attn.onnx"
CHECKPOINT_VERSION = 1
# Tiny Shakespeare's plays: "NAME:\ntext\n\n"; a chat renders as such a dialogue
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] | upper }}:\n{{ m['content'] }}\n\n{% endfor %}"
                 "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}")


def read_checkpoint(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json (checked) and the weights as float32 arrays."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise SourceError(f"{str(folder)!r} is not a megabyte checkpoint folder (config.json and model.safetensors, "
                          f"written by `python -m slm.megabyte.train`)")
    config = json.loads((folder / "config.json").read_text())
    if config.get("format_version") != CHECKPOINT_VERSION or config.get("architecture") not in ("megabyte", "flat"):
        raise SourceError(f"{str(folder / 'config.json')!r}: architecture {config.get('architecture')!r} format_version "
                          f"{config.get('format_version')!r}; accepted: megabyte or flat, format_version {CHECKPOINT_VERSION}")
    return config, {k: v.astype(np.float32) for k, v in load_file(folder / "model.safetensors").items()}


def _rope(cfg: dict, n: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    hd = cfg["dim"] // cfg["n_heads"]
    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv[None]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32), inv.tolist()


def _attention_mass(g: Graph, probs: str, past_k: str, i: int, nh: int, nkv: int, name: str) -> None:
    """GroupQueryAttention's probabilities (B, nh, S, T) -> mass per KV head and slot (B, nkv, capacity),
    padded to the cache's capacity, as slm/export/graph.py computes it for token models."""
    mass = g.op("ReduceSum", [probs, g.init(f"axes/{i}/q", np.array([2], np.int64))], keepdims=0)
    grouped = g.op("Reshape", [mass, g.init(f"shape/{i}/grouped", np.array([0, nkv, nh // nkv, -1], np.int64))])
    mass = g.op("ReduceSum", [grouped, g.init(f"axes/{i}/g", np.array([2], np.int64))], keepdims=0)
    s2, s3 = g.init("s2", np.array([2], np.int64)), g.init("s3", np.array([3], np.int64))
    cap = g.op("Slice", [g.op("Shape", [past_k]), s2, s3])
    total = g.op("Slice", [g.op("Shape", [mass]), s2, s3])
    pads = g.op("Concat", [g.init("zeros5", np.zeros(5, np.int64)), g.op("Sub", [cap, total])], axis=0)
    g.output(g.op("Pad", [mass, pads]), name, TensorProto.FLOAT, ["batch", nkv, "capacity"])


def _block(g: Graph, x: str, w: dict, p: str, cfg: dict, i: int, attn_in: list[str],
           mass_name: str = "") -> tuple[str, str, str]:
    """One pre-norm block; attn_in = [seqlens_k, total_len, cos, sin, position_ids]; with `mass_name`
    also the attention mass output. Returns (x, present k, v)."""
    nh, nkv, hd, eps = cfg["n_heads"], cfg["n_kv_heads"], cfg["dim"] // cfg["n_heads"], cfg["norm_eps"]
    a, m = p + "self_attn.", p + "mlp."
    h = rms_norm(g, x, g.init(p + "input_layernorm.weight", w[p + "input_layernorm.weight"]), eps)
    qkv = linear(g, h, np.concatenate([w[a + f"{n}_proj.weight"] for n in "qkv"]), a + "qkv_proj", None, 0)
    past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
    for name in (past_k, past_v):
        g.input(name, TensorProto.FLOAT, ["batch", nkv, "capacity", hd])
    outs = g.op("GroupQueryAttention", [qkv, "", "", past_k, past_v, *attn_in], n_out=4 if mass_name else 3,
                domain=MS, name=a + "gqa", num_heads=nh, kv_num_heads=nkv, scale=hd ** -0.5, do_rotary=1,
                **({"qk_output": 2} if mass_name else {}))
    attn, present_k, present_v = outs[:3]
    if mass_name:
        _attention_mass(g, outs[3], past_k, i, nh, nkv, mass_name)
    x = g.op("Add", [x, linear(g, attn, w[a + "o_proj.weight"], a + "o_proj", None, 0)])
    h = rms_norm(g, x, g.init(p + "post_attention_layernorm.weight", w[p + "post_attention_layernorm.weight"]), eps)
    inter = cfg["mlp_dim"]
    gate, up = g.op("Split", [linear(g, h, np.concatenate([w[m + "gate_proj.weight"], w[m + "up_proj.weight"]]),
                                     m + "gate_up_proj", None, 0),
                              g.init(m + "split", np.array([inter, inter], np.int64))], n_out=2, axis=-1)
    act = g.op("QuickGelu", [gate], domain=MS, alpha=1.0)           # silu
    x = g.op("Add", [x, linear(g, g.op("Mul", [act, up]), w[m + "down_proj.weight"], m + "down_proj", None, 0)])
    return x, present_k, present_v


def _stack(g: Graph, x: str, w: dict, prefix: str, cfg: dict, positions: int, io: GraphIO) -> tuple[str, dict]:
    """The blocks of one decoder and its final norm, with the step inputs; returns (h, KV names)."""
    pos = g.input(io.position_ids, TensorProto.INT64, ["batch", "seq"])
    seqlens_k = g.input(io.seqlens_k, TensorProto.INT32, ["batch"])
    total_len = g.input(io.total_sequence_length, TensorProto.INT32, [])
    cos, sin, _ = _rope(cfg, positions)
    attn_in = [seqlens_k, total_len, g.init(prefix + "rope.cos", cos), g.init(prefix + "rope.sin", sin), pos]
    kv = {k: [] for k in ("past_key", "past_value", "present_key", "present_value")}
    nkv, hd = cfg["n_kv_heads"], cfg["dim"] // cfg["n_heads"]
    for i in range(cfg["n_layers"]):
        x, pk, pv = _block(g, x, w, f"{prefix}layers.{i}.", cfg, i, attn_in, io.attention_mass[i] if io.attention_mass else "")
        for name, src, kind in ((f"present.{i}.key", pk, "key"), (f"present.{i}.value", pv, "value")):
            g.output(src, name, TensorProto.FLOAT, ["batch", nkv, "capacity", hd])
            kv[f"past_{kind}"].append(f"past_key_values.{i}.{kind}")
            kv[f"present_{kind}"].append(name)
    return rms_norm(g, x, g.init(prefix + "norm.weight", w[prefix + "norm.weight"]), cfg["norm_eps"]), kv


def _model(g: Graph, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, g.inputs, g.outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                             ir_version=IR_VERSION, producer_name="slm")


def build_global_graph(config: dict, w: dict, patches: Patches, io: GraphIO) -> tuple[onnx.ModelProto, dict]:
    P, cfg = config["patch_size"], config["glob"]
    e, D = cfg["dim"] // P, config["local"]["dim"]
    g = Graph(TensorProto.FLOAT)
    ids = g.input(patches.patch_ids, TensorProto.INT64, ["batch", "seq", P])
    keep = g.input(io.num_logits_to_keep, TensorProto.INT64, [])
    rows = g.op("Add", [ids, g.init("slot_offset", np.arange(P, dtype=np.int64) * (BYTES + 1))])   # slot p: row p*257 + byte
    x = g.op("Gather", [g.init("patch_embed.weight", w["patch_embed.weight"]), rows])               # (B, S, P, e)
    x = g.op("Reshape", [x, g.init("shape/patch", np.array([0, 0, P * e], np.int64))])              # (B, S, P*e)
    h, kv = _stack(g, x, w, "glob.", cfg, config["max_patches"], io)
    start = g.op("Neg", [g.op("Unsqueeze", [keep, g.init("axes/0", np.array([0], np.int64))])])
    h = g.op("Slice", [h, start, g.init("slice/end", np.array([2 ** 62], np.int64)), g.init("slice/axis", np.array([1], np.int64))])
    h = g.op("Reshape", [h, g.init("shape/pieces", np.array([0, 0, P, e], np.int64))])              # (B, keep, P, e)
    context = linear(g, h, w["global_to_local.weight"], "global_to_local", None, 0)                   # (B, keep, P, D)
    g.output(context, patches.local_context, TensorProto.FLOAT, ["batch", "keep", P, D])
    return _model(g, "megabyte_global"), kv


def build_local_graph(config: dict, w: dict, patches: Patches, io: GraphIO = GraphIO()) -> tuple[onnx.ModelProto, dict]:
    P, cfg = config["patch_size"], config["local"]
    g = Graph(TensorProto.FLOAT)
    context = g.input(patches.context, TensorProto.FLOAT, ["batch", "seq", cfg["dim"]])
    ids = g.input(io.input_ids, TensorProto.INT64, ["batch", "seq"])
    x = g.op("Add", [context, g.op("Gather", [g.init("local_embed.weight", w["local_embed.weight"]), ids])])
    h, kv = _stack(g, x, w, "local.", cfg, P, io)
    g.output(linear(g, h, w["lm_head.weight"], "lm_head", None, 0), io.logits, TensorProto.FLOAT, ["batch", "seq", BYTES])
    return _model(g, "megabyte_local"), kv


def _dims(cfg: dict, vocab: int, positions: int) -> Dimensions:
    return Dimensions(vocab_size=vocab, hidden_size=cfg["dim"], num_layers=cfg["n_layers"], num_heads=cfg["n_heads"],
                      num_kv_heads=cfg["n_kv_heads"], head_dim=cfg["dim"] // cfg["n_heads"], max_positions=positions)


def _kv(kv: dict, capacity: int, layers: int) -> KVLayout:
    return KVLayout(dtype="float32", default_capacity=capacity, sliding_window=[0] * layers, **kv)


def export_megabyte(checkpoint: str | Path, out: str | Path) -> Manifest:
    config, w = read_checkpoint(checkpoint)
    if config["architecture"] != "megabyte":
        raise SourceError(f"{str(checkpoint)!r} holds a {config['architecture']!r} model; use export_flat for it")
    P, glob, local = config["patch_size"], config["glob"], config["local"]
    stub = Patches(patch_size=P, local_model_file=LOCAL_MODEL, local_dims=None, local_kv=None, local_rope=None)
    global_model, global_kv = build_global_graph(config, w, stub, GraphIO())
    # the same global graph plus per-layer attention mass, for h2o, tova, snapkv and namm on the patch cache
    io = GraphIO(attention_mass=[f"attention_mass.{i}" for i in range(glob["n_layers"])])
    attention_model, _ = build_global_graph(config, w, stub, io)
    local_model, local_kv = build_local_graph(config, w, stub)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    onnx.save_model(global_model, str(out / "model.onnx"))
    onnx.save_model(attention_model, str(out / ATTENTION_MODEL))
    onnx.save_model(local_model, str(out / LOCAL_MODEL))
    patches = Patches(patch_size=P, local_model_file=LOCAL_MODEL, local_dims=_dims(local, BYTES, P),
                      local_kv=_kv(local_kv, P, local["n_layers"]),
                      local_rope=Rope(inv_freq={"default": _rope(local, 1)[2]}, of_layer=["default"] * local["n_layers"]))
    manifest = Manifest(
        architecture="megabyte", dims=_dims(glob, BYTES + 1, config["max_patches"]),
        kv=_kv(global_kv, config["max_patches"], glob["n_layers"]), quant=Quantization(mode="fp32"), io=io,
        rope=Rope(inv_freq={"default": _rope(glob, 1)[2]}, of_layer=["default"] * glob["n_layers"]),
        bos_token_id=None, eos_token_ids=[], pad_token_id=PAD, chat_template=CHAT_TEMPLATE, tokenizer_file="",
        attention_model_file=ATTENTION_MODEL,
        source=str(checkpoint), patches=patches)
    write_manifest(out, manifest)
    return read_manifest(out)       # what we wrote must be what the runtime accepts


def byte_tokenizer():
    """A tokenizers file whose 256 tokens are the byte values, id = byte (GPT-2's byte-level alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):            # GPT-2's bytes_to_unicode: printable bytes are themselves, the rest 256+
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b], extra = chr(256 + extra), extra + 1
    tok = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def export_flat(checkpoint: str | Path, out: str | Path) -> Manifest:
    """The flat byte-level baseline -> a llama package (fp32) with the byte tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from slm.export import build_package

    config, w = read_checkpoint(checkpoint)
    if config["architecture"] != "flat":
        raise SourceError(f"{str(checkpoint)!r} holds a {config['architecture']!r} model; use export_megabyte for it")
    d = config["decoder"]
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=BYTES, hidden_size=d["dim"], intermediate_size=d["mlp_dim"],
                                      num_hidden_layers=d["n_layers"], num_attention_heads=d["n_heads"],
                                      num_key_value_heads=d["n_kv_heads"], rms_norm_eps=d["norm_eps"],
                                      rope_theta=d["rope_theta"], max_position_embeddings=config["max_bytes"],
                                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None))
    names = {k: "model." + k if k == "embed_tokens.weight" else k for k in w}
    hf.load_state_dict({names[k]: torch.from_numpy(v) for k, v in w.items()}, strict=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer())
    tokenizer.chat_template = CHAT_TEMPLATE
    return build_package(str(checkpoint), out, quant="fp32", attention_stats=False, model=hf.eval(), tokenizer=tokenizer)


def is_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` is a checkpoint of slm/megabyte/train.py (rather than a Hugging Face folder)."""
    config = Path(folder) / "config.json"
    if not (config.is_file() and (Path(folder) / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("architecture") in ("megabyte", "flat")
    except (ValueError, AttributeError):
        return False


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Manifest:
    config, _ = read_checkpoint(checkpoint)
    return (export_megabyte if config["architecture"] == "megabyte" else export_flat)(checkpoint, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m slm.export.megabyte", description="a slm/megabyte/flat checkpoint -> a package")
    p.add_argument("checkpoint")
    p.add_argument("out")
    args = p.parse_args(argv)
    export_checkpoint(args.checkpoint, args.out)
    print(args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
