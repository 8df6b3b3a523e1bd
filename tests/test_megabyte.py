"""MEGABYTE byte packages: export parity with PyTorch, generation under a KV budget, the CLI, and the
package errors every package gives. Tiny random models (weights scaled up so logits differ by whole
units: a wrong wire shows), exported to real packages and run on ONNX Runtime."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from slm.runtime import Engine, SamplingParams
from slm.core.errors import BudgetExceededError, PackageError, PromptTooLongError, SlmError

TOL = 1e-4      # fp32 graphs against fp32 PyTorch: max |difference| of logits per byte


def _scaled(model, seed: int):
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.25 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def megabyte_model():
    from slm.megabyte.model import Megabyte
    from slm.megabyte.train import PRESETS

    return _scaled(Megabyte(PRESETS["megabyte-tiny"]), seed=0)          # P = 4, GQA 2/1 heads


@pytest.fixture(scope="module")
def byte_package(tmp_path_factory, megabyte_model):
    from slm.export.megabyte import export_megabyte
    from slm.megabyte.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("megabyte")
    export_megabyte(save_checkpoint(megabyte_model, root / "ckpt"), root / "pkg")
    return root / "pkg"


def _runtime_logits(engine, data: list[int], prompt: int) -> np.ndarray:
    """Logits predicting each byte of `data` when the first `prompt` bytes are prefilled at once and
    the rest fed one by one: row t predicts data[t], for t >= prompt."""
    cache = engine.new_cache()
    rows = [engine.prefill(cache, data[:prompt]).copy()]
    rows += [engine.decode_step(cache, b).copy() for b in data[prompt:-1]]
    return np.stack(rows)


@pytest.mark.parametrize("prompt, policy", [(0, "none"), (1, "none"), (4, "none"), (9, "none"), (9, "h2o")])
def test_export_parity_logits_per_byte(byte_package, megabyte_model, prompt, policy):
    """h2o runs the attention-statistics graph (model_attn.onnx): the same logits."""
    import torch

    data = list(np.random.default_rng(prompt).integers(0, 256, 28))      # 7 patches of 4
    with torch.no_grad():
        expected = megabyte_model(torch.tensor([data]))[0].numpy()        # row t predicts data[t]
    got = _runtime_logits(Engine(byte_package, threads=1, kv_policy=policy), data, prompt)
    assert np.abs(expected).max() > 1.0                                    # not a near-uniform model
    np.testing.assert_allclose(got, expected[prompt:], atol=TOL, rtol=0)


def test_flat_baseline_exports_as_a_llama_package(tmp_path):
    import torch

    from slm.export.megabyte import export_flat
    from slm.megabyte.checkpoint import save_checkpoint
    from slm.megabyte.model import FlatByteLM
    from slm.megabyte.train import PRESETS

    model = _scaled(FlatByteLM(PRESETS["flat-tiny"]), seed=1)
    manifest = export_flat(save_checkpoint(model, tmp_path / "ckpt"), tmp_path / "pkg")
    assert manifest.architecture == "llama" and manifest.dims.vocab_size == 256
    engine = Engine(tmp_path / "pkg", threads=1)
    text = "Byte by byte: é, 🙂."
    ids = engine.encode(text, raw=True)
    assert ids == list(text.encode("utf-8"))                               # the byte tokenizer: id = byte
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(engine.verify(engine.new_cache(), ids), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("policy", ["streaming", "knorm", "h2o", "tova", "snapkv"])
def test_budget_held_at_every_step(byte_package, policy):
    engine = Engine(byte_package, threads=1, kv_budget="64", kv_policy=policy)   # 64 bytes of text = 16 patches
    assert engine.capacity_patches == 16 and engine.capacity == 64
    cache = engine.new_cache()
    lengths = []
    for event in engine.generate("A prompt of some forty bytes, give or take.", raw=True, max_tokens=200,
                                 params=SamplingParams(temperature=1.0, seed=0), cache=cache):
        assert cache.glob.length <= cache.glob.capacity == 16
        assert event.kv.cached_tokens <= event.kv.capacity_tokens == 64
        assert event.kv.kv_bytes == cache.glob.nbytes + cache.local.nbytes
        lengths.append(cache.glob.length)
    assert event.finish_reason == "length" and event.generated_tokens == 200
    assert event.kv.evicted_tokens > 0 and max(lengths) == 16               # it filled and evicted
    assert (cache.glob.positions[0, 0, :4] == np.arange(4)).all()          # the pad patch and the opening stay


def test_memory_budget_converts_through_patches(byte_package):
    engine = Engine(byte_package, threads=1, kv_budget="16KiB")
    per_patch = engine.manifest.kv.bytes_per_token(engine.manifest.dims)
    assert engine.capacity_patches == 16 * 1024 // per_patch
    assert engine.cache.glob.nbytes == engine.capacity_patches * per_patch


def test_no_policy_refuses_what_does_not_fit(byte_package):
    engine = Engine(byte_package, threads=1, kv_budget="64")
    with pytest.raises(PromptTooLongError, match="take at most 59 prompt bytes"):
        list(engine.generate("x" * 60, raw=True))
    events = list(engine.generate("x" * 40, raw=True, max_tokens=500, params=SamplingParams(temperature=1.0, seed=0)))
    assert events[-1].finish_reason == "length" and events[-1].generated_tokens < 30   # the budget ended it
    with pytest.raises(SlmError, match="holds 3 patches"):
        Engine(byte_package, threads=1, kv_budget="12")


def test_streaming_is_utf8_safe(byte_package):
    """Sampled bytes split characters and make invalid sequences: the streamed text is always the
    replacement-decoded bytes, whole characters only."""
    engine = Engine(byte_package, threads=1)
    events = list(engine.generate("é🙂", raw=True, max_tokens=120, params=SamplingParams(temperature=1.5, seed=3)))
    generated = bytes(e.token for e in events)
    assert any(b >= 0x80 for b in generated)
    assert "".join(e.text for e in events) == generated.decode("utf-8", errors="replace")


def test_stop_strings_and_a_chat_that_reuses_its_cache(byte_package):
    engine = Engine(byte_package, threads=1)
    first = "".join(e.text for e in engine.generate("ROMEO:\n", raw=True, max_tokens=60))
    stop = next(first[i:i + 2] for i in range(10, len(first) - 2) if first[i:i + 2].isprintable() and first[i:i + 2].strip())
    stopped = list(engine.generate("ROMEO:\n", raw=True, max_tokens=60, stop=[stop]))
    assert stopped[-1].finish_reason == "stop" and "".join(e.text for e in stopped) == first[:first.index(stop)]

    chat = [{"role": "user", "content": "Good morrow."}]
    reply = "".join(e.text for e in engine.generate(chat, max_tokens=30))
    chat += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And to you?"}]
    reused = [e.token for e in engine.generate(chat, max_tokens=30)]                    # the engine's own cache
    fresh = [e.token for e in engine.generate(chat, max_tokens=30, cache=engine.new_cache())]
    assert reused == fresh


def _slm(*args):
    return subprocess.run([sys.executable, "-m", "slm.cli", *args], capture_output=True, text=True, timeout=180)


def test_a_byte_package_answers_through_slm_generate(byte_package):
    out = _slm("generate", "ROMEO:", "--model", str(byte_package), "--max-tokens", "24", "--raw", "--threads", "1",
               "--kv-budget", "64", "--kv-policy", "streaming", "-v")
    assert out.returncode == 0, out.stderr
    assert "24 generated" in out.stderr and "running on CPU" in out.stderr
    engine = Engine(byte_package, threads=1)
    expected = "".join(e.text for e in engine.generate("ROMEO:", raw=True, max_tokens=24))
    assert out.stdout == expected + "\n"


def _copy(pkg, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(pkg, dst)
    return dst


def _edit(pkg, **changes):
    d = json.loads((pkg / "manifest.json").read_text())
    d.update(changes)
    (pkg / "manifest.json").write_text(json.dumps(d))


@pytest.mark.parametrize("corrupt, message", [
    (lambda p: (p / "manifest.json").unlink(), "has no manifest.json"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "manifest.json").write_text("[]"), "expected a JSON object"),
    (lambda p: _edit(p, format_version=99), "format_version 99 is not supported"),
    (lambda p: _edit(p, architecture="gpt2"), "architecture 'gpt2' is unknown; accepted: llama, gemma3, megabyte"),
    (lambda p: _edit(p, dims={"vocab_size": 3}), "missing or has a wrong field"),
    (lambda p: _edit(p, patches={"patch_size": 4}), "missing or has a wrong field"),
    (lambda p: _edit(p, patches=None), "lacks the byte model's 'patches' section"),
    (lambda p: (p / "model.onnx").unlink(), "lacks 'model.onnx'"),
    (lambda p: (p / "local.onnx").unlink(), "lacks 'local.onnx'"),
    (lambda p: (p / "model_attn.onnx").unlink(), "lacks 'model_attn.onnx'"),
    (lambda p: (p / "model.onnx").write_bytes(b"garbage" * 100), "re-export it"),
    (lambda p: (p / "local.onnx").write_bytes(b"garbage" * 100), "re-export it"),
])
def test_malformed_byte_package_is_named(byte_package, tmp_path, corrupt, message):
    pkg = _copy(byte_package, tmp_path)
    corrupt(pkg)
    with pytest.raises(PackageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Engine(pkg, threads=1)
    out = _slm("generate", "hi", "--model", str(pkg), "--threads", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.startswith("error:")]) == 1, out.stderr


def test_format_version_1_packages_are_still_read(tiny_package, tmp_path):
    from slm.core.package import read_manifest

    pkg = _copy(tiny_package, tmp_path)
    _edit(pkg, format_version=1)
    assert read_manifest(pkg).patches is None
    assert "".join(e.text for e in Engine(pkg, threads=1).generate("hi", max_tokens=3)) is not None


def test_byte_detokenizer_holds_split_characters():
    from slm.runtime.detokenizer import ByteDetokenizer

    d = ByteDetokenizer()
    data = "a🙂é".encode()
    pieces = [d.add(b) for b in data]
    assert pieces == ["a", "", "", "", "🙂", "", "é"]
    assert d.add(0xF0) == "" and d.flush() == "\ufffd"


def test_byte_runtime_pulls_no_training_stack(byte_package):
    code = (
        "import sys\n"
        "from slm.runtime import Engine\n"
        f"e = Engine({str(byte_package)!r}, threads=1)\n"
        "text = ''.join(ev.text for ev in e.generate('hi', raw=True, max_tokens=9))\n"
        "print(type(e).__name__, 'BAD:' + ','.join(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ByteEngine BAD:\n" in out.stdout, out.stdout


def test_a_byte_package_serves_the_openai_api(byte_package):
    import httpx
    import openai

    from slm.runtime.serve import BackgroundServer, create_app

    engine = Engine(byte_package, threads=1)
    chat = [{"role": "user", "content": "Speak."}]
    expected = "".join(e.text for e in engine.generate(chat, max_tokens=16, cache=engine.new_cache()))
    with BackgroundServer(create_app(engine, model_id="tiny-megabyte", max_concurrent=1, max_queue=2)) as server, \
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60,
                          http_client=httpx.Client(trust_env=False)) as client:
        reply = client.chat.completions.create(model="tiny-megabyte", messages=chat, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(engine.encode(chat))       # bytes


def test_plain_chat_with_a_byte_package(byte_package):
    out = subprocess.run([sys.executable, "-m", "slm.cli", "chat", "--plain", "--model", str(byte_package),
                          "--max-tokens", "12", "--threads", "1"],
                         input="Good morrow.\nAnd to you?\n", capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("slm> ") == 2 and "KV slots]" in out.stderr


def test_slm_export_takes_a_byte_model_checkpoint(byte_package, tmp_path):
    from slm.core.package import read_manifest

    out = _slm("export", str(byte_package.parent / "ckpt"), str(tmp_path / "pkg"))
    assert out.returncode == 0, out.stderr
    m = read_manifest(tmp_path / "pkg")
    assert m.architecture == "megabyte" and m.patches.patch_size == 4 and m.tokenizer_file == ""
    out = _slm("export", str(byte_package.parent / "ckpt"), str(tmp_path / "q"), "--quant", "int4")
    assert out.returncode == 2 and "exports at fp32 only" in out.stderr


def test_megabyte_is_causal_byte_by_byte(megabyte_model):
    """logits[t] predict byte t: they may read bytes < t only (the one-patch and one-byte shifts)."""
    import torch

    x = torch.tensor([list(np.random.default_rng(5).integers(0, 256, 24))])
    with torch.no_grad():
        base = megabyte_model(x)[0]
        for t in (0, 3, 4, 13, 23):
            y = x.clone()
            y[0, t] = (y[0, t] + 1) % 256
            changed = (megabyte_model(y)[0] - base).abs().amax(-1) > 1e-6
            assert not changed[:t + 1].any(), f"byte {t} leaks into positions {changed[:t + 1].nonzero().ravel().tolist()}"
            assert t == 23 or changed[t + 1]


def test_training_learns_and_resumes(tmp_path):
    """A periodic corpus is learnt in a few dozen steps; rerunning the finished command trains nothing more."""
    from slm.megabyte.train import TrainConfig, train

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"to be or not to be, " * 400)
    cfg = TrainConfig(preset="megabyte-tiny", data=str(corpus), out=str(tmp_path / "run"), flops=1.2e9,
                      batch_size=4, seq_bytes=64, lr=1e-2, eval_every=1000, save_every=10, threads=1)
    result = train(cfg)
    assert result["steps"] == cfg.steps >= 30 and result["held_out_bits_per_byte"] < 2.0
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == cfg.steps
    again = train(cfg)
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == cfg.steps
    assert again["held_out_bits_per_byte"] == result["held_out_bits_per_byte"]


def test_the_tui_chats_with_a_byte_package(byte_package, tmp_path, monkeypatch):
    """`slm chat` without --plain: the Textual app streams a byte model's reply and shows its budget."""
    pytest.importorskip("textual")
    import asyncio

    from slm.runtime import Engine
    from tests.test_tui import GREEDY, SIZE, send, until
    from slm.tui.app import ChatApp
    from slm.tui.store import Store
    from slm.tui.widgets import Reply, StatusBar

    monkeypatch.setenv("SLM_DATA", str(tmp_path))
    engine = Engine(byte_package, kv_budget=64, kv_policy="streaming")
    store = Store(tmp_path / "chats.db")

    async def scenario():
        app = ChatApp(engine, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "To be, or not")
            await until(pilot, lambda: len(store.messages(app.chat.id)) == 2, timeout=60)
            assert app.query_one(Reply).source == store.messages(app.chat.id)[-1].content
            stats = app.query_one(StatusBar).stats
            assert stats.capacity_tokens == engine.capacity and stats.generated_tokens >= 1

    asyncio.run(asyncio.wait_for(scenario(), timeout=120))
