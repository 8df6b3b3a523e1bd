"""LLM.int8()'s decomposition at export: calibrated outlier channels bypass int8 activations.

The decomposition must be exact in real arithmetic (checked with fp32 activations, where the kernels
add no error of their own), and calibration must find channels that really are outliers.
"""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from slm.export.architectures import float_weights, rotary_tables, spec_of
from slm.export.calibrate import activation_outliers
from slm.export.graph import Outliers, build_graph
from slm.export import quantize_weights
from tests.conftest import tiny_llama


def _logits(model_proto, io, kv, spec, ids: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    n = ids.shape[1]
    feeds = {io.input_ids: ids, io.position_ids: np.arange(n, dtype=np.int64)[None],
             io.seqlens_k: np.array([n - 1], np.int32), io.total_sequence_length: np.array(n, np.int32),
             io.num_logits_to_keep: np.array(n, np.int64)}
    for name in kv["past_key"] + kv["past_value"]:
        feeds[name] = np.zeros((1, spec.num_kv_heads, n, spec.head_dim), np.float32)
    return s.run([io.logits], feeds)[0]


def _planted_model():
    """A tiny Llama whose hidden channel 5 carries activations ~40x the others, as real LLMs' do."""
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[5] = 40.0
        model.model.layers[1].post_attention_layernorm.weight[9] = 40.0
        model.model.layers[0].mlp.up_proj.weight[7] *= 400.0    # the down projection's input channel 7
    return model


def test_calibration_finds_the_planted_outlier_channels(smollm2_tokenizer):
    found = activation_outliers(_planted_model(), smollm2_tokenizer, max_channels=4)
    assert 5 in found["model.layers.0.attn_in"].channels
    assert 9 in found["model.layers.1.mlp_in"].channels
    assert 7 in found["model.layers.0.down_in"].channels
    assert all(len(o.channels) <= 4 and np.all((o.alpha > 0) & (o.alpha <= 1)) for o in found.values())
    # scaled down to ordinary magnitudes: the planted x40 channel by about 1/40 or more
    planted = found["model.layers.0.attn_in"]
    assert planted.alpha[list(planted.channels).index(5)] < 0.2
    # the chosen channels are never ordinary ones: without a plant layer 1's attention input has none of them
    assert 5 not in getattr(found.get("model.layers.1.attn_in"), "channels", [])


@pytest.mark.parametrize("quant", ["int4", "int8"])   # float zero points (side path) and uint8 zero points
def test_decomposition_is_exact_with_fp32_activations(quant):
    model = _planted_model()
    spec = spec_of(model.config, 64)
    weights, _ = quantize_weights(float_weights(model, spec), quant)
    rope = rotary_tables(model, spec, 64)
    channels = {"model.layers.0.attn_in": Outliers(np.array([5, 17]), np.array([0.05, 0.5], np.float32)),
                "model.layers.1.mlp_in": Outliers(np.array([9]), np.array([0.1], np.float32)),
                "model.layers.0.down_in": Outliers(np.array([7, 40]), np.array([0.02, 0.5], np.float32)),
                "model.layers.1.down_in": Outliers(np.array([3]), np.array([0.2], np.float32)),
                "head_in": Outliers(np.array([3, 60]), np.array([0.25, 0.3], np.float32))}
    ids = np.random.default_rng(0).integers(3, 49152, size=(1, 24)).astype(np.int64)
    plain = _logits(*build_graph(spec, weights, rope, accuracy_level=0), spec, ids)
    split_model, io, kv = build_graph(spec, weights, rope, accuracy_level=0, outliers=channels)
    assert sum("outlier" in t.name for t in split_model.graph.initializer) >= 3   # the fp32 path is in the graph
    split = _logits(split_model, io, kv, spec, ids)
    assert np.abs(split - plain).max() <= 1e-4 * np.abs(plain).max()


def test_decomposition_cuts_the_int8_activation_error():
    """With int8 activations the planted outliers set their blocks' scales; sending them through fp32
    brings the logits closer to the fp32-activation ones (a bound, on any CPU's kernel)."""
    model = _planted_model()
    spec = spec_of(model.config, 64)
    weights, _ = quantize_weights(float_weights(model, spec), "int4")
    rope = rotary_tables(model, spec, 64)
    ids = np.random.default_rng(1).integers(3, 49152, size=(1, 32)).astype(np.int64)
    exact = _logits(*build_graph(spec, weights, rope, accuracy_level=0), spec, ids)
    int8 = _logits(*build_graph(spec, weights, rope, accuracy_level=4), spec, ids)
    channels = {"model.layers.0.attn_in": Outliers(np.array([5]), np.array([1 / 40], np.float32)),
                "model.layers.1.mlp_in": Outliers(np.array([9]), np.array([1 / 40], np.float32)),
                "model.layers.0.down_in": Outliers(np.array([7]), np.array([1 / 400], np.float32))}
    split = _logits(*build_graph(spec, weights, rope, accuracy_level=4, outliers=channels), spec, ids)
    err_int8, err_split = np.abs(int8 - exact).mean(), np.abs(split - exact).mean()
    assert err_split < 0.5 * err_int8, (err_split, err_int8)


def test_untied_4bit_embedding_is_gathered_exactly():
    """A 4-bit embedding with float zero points (a GGUF's Q4_K/Q4_1 token_embd) is dequantised on
    gather with its own blocks, not re-quantised to 8 bits."""
    from slm.export.quantize import quantize_rtn

    model = tiny_llama(tie_word_embeddings=False)
    spec = spec_of(model.config, 64)
    weights, _ = quantize_weights(float_weights(model, spec), "int4")
    rope = rotary_tables(model, spec, 64)
    table = quantize_rtn(weights["model.embed_tokens.weight"].dequantize(), 4, 32)
    carried = {**weights, "model.embed_tokens.weight": table}
    as_float = {**weights, "model.embed_tokens.weight": table.dequantize()}
    ids = np.random.default_rng(2).integers(3, 49152, size=(1, 16)).astype(np.int64)
    graph, io, kv = build_graph(spec, carried, rope, accuracy_level=0)
    assert "embed.qweight4" in {t.name for t in graph.graph.initializer}
    got = _logits(graph, io, kv, spec, ids)
    ref = _logits(*build_graph(spec, as_float, rope, accuracy_level=0), spec, ids)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_int4_side_path_with_qkv_biases_is_exact():
    """Qwen2's QKV biases ride in MatMulNBits' bias input on the float-zero-point side path: with fp32
    activations the int4 graph gives the logits of its own dequantised weights."""
    from tests.test_export_parity import _tiny_qwen2

    model = _tiny_qwen2()
    spec = spec_of(model.config, 64)
    weights, _ = quantize_weights(float_weights(model, spec), "int4")
    rope = rotary_tables(model, spec, 64)
    as_float = {k: (v.dequantize() if hasattr(v, "dequantize") else v) for k, v in weights.items()}
    ids = np.random.default_rng(3).integers(3, 49152, size=(1, 16)).astype(np.int64)
    got = _logits(*build_graph(spec, weights, rope, accuracy_level=0), spec, ids)
    ref = _logits(*build_graph(spec, as_float, rope, accuracy_level=0), spec, ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def _only_int8_at(model_proto, node_name: str):
    """The graph with fp32 activations everywhere except the MatMulNBits named `node_name` (int8)."""
    for node in model_proto.graph.node:
        if node.op_type == "MatMulNBits":
            for a in node.attribute:
                if a.name == "accuracy_level":
                    a.i = 4 if node.name == node_name else 0
    return model_proto


def test_down_projection_outliers_cut_the_int8_activation_error():
    """A channel of act(gate) * up ~20x the median one (a 'massive activation' of the down projection's
    input; SmolLM2's layer 11 has one at 3,769x its median): scaled down in up's rows, the rest through
    fp32. Only that projection runs int8 activations, so its error is all there is to see."""
    model = _planted_model()
    spec = spec_of(model.config, 64)
    weights, _ = quantize_weights(float_weights(model, spec), "int4")
    rope = rotary_tables(model, spec, 64)
    ids = np.random.default_rng(4).integers(3, 49152, size=(1, 32)).astype(np.int64)
    name = "model.layers.0.mlp.down_proj"
    exact = _logits(*build_graph(spec, weights, rope, accuracy_level=0), spec, ids)
    plain, io, kv = build_graph(spec, weights, rope, accuracy_level=4)
    int8 = _logits(_only_int8_at(plain, name), io, kv, spec, ids)
    channels = {"model.layers.0.down_in": Outliers(np.array([7]), np.array([1 / 400], np.float32))}
    split_model, io, kv = build_graph(spec, weights, rope, accuracy_level=4, outliers=channels)
    split = _logits(_only_int8_at(split_model, name), io, kv, spec, ids)
    err_int8, err_split = np.abs(int8 - exact).mean(), np.abs(split - exact).mean()
    assert err_int8 > 0
    assert err_split < 0.5 * err_int8, (err_split, err_int8)
