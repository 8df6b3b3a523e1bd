"""The real-size model, Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, ../shared/models/README.md), as a
package: it answers through the engine and chats in the TUI. The package is made once by hand
(`slm export ~/.cache/slm/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf ~/.cache/slm/packages/qwen2.5-coder-1.5b`,
minutes and ~10 GB of RAM), never in the suite; without it these tests skip."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from slm.runtime import Engine, SamplingParams

PACKAGE = Path.home() / ".cache" / "slm" / "packages" / "qwen2.5-coder-1.5b"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (PACKAGE / "manifest.json").is_file(),
                                 reason=f"no Qwen2.5-Coder-1.5B package at {PACKAGE} (see this file's docstring)")]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(PACKAGE, threads=2, kv_budget=1024)


def test_the_real_size_model_answers(engine):
    m = engine.manifest
    assert m.dims.num_layers == 28 and m.dims.hidden_size == 1536 and m.quant.mode == "gguf"
    text = "".join(e.text for e in engine.generate("What is the capital of France? One word.",
                                                   params=SamplingParams(temperature=0), max_tokens=8))
    assert "Paris" in text, text


def test_the_real_size_model_chats_in_the_tui(engine, tmp_path, monkeypatch):
    pytest.importorskip("textual")
    from tests.test_tui import GREEDY, SIZE, send, until
    from slm.tui.app import ChatApp
    from slm.tui.store import Store
    from slm.tui.widgets import Reply, StatusBar

    monkeypatch.setenv("SLM_DATA", str(tmp_path))
    store = Store(tmp_path / "chats.db")

    async def scenario():
        app = ChatApp(engine, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "Write a Python function that adds two numbers.")
            await until(pilot, lambda: len(store.messages(app.chat.id)) == 2, timeout=240)
            assert "def " in app.query_one(Reply).source
            assert app.query_one(StatusBar).stats.capacity_tokens == 1024

    asyncio.run(asyncio.wait_for(scenario(), timeout=300))
