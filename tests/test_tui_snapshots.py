"""SVG snapshots of the chat's screens (pytest-textual-snapshot). A canned engine yields fixed events,
so the pictures do not change from run to run; the real engine is driven in test_tui.py.

Update after an intended change: pytest tests/test_tui_snapshots.py --snapshot-update
"""
from __future__ import annotations

import pytest

pytest.importorskip("pytest_textual_snapshot")

from slm.core.errors import PromptTooLongError  # noqa: E402
from slm.tui.app import ChatApp  # noqa: E402
from slm.tui.screenshot import ANSWER, QUESTION, CannedEngine  # noqa: E402
from slm.tui.store import ChatSettings, Store  # noqa: E402

SIZE = (110, 34)


class RefusingEngine(CannedEngine):
    def generate(self, prompt, **kwargs):
        raise PromptTooLongError("the prompt has 2100 tokens; this model and KV budget take at most 2047 prompt "
                                 "tokens (context 8192, KV budget 2048 tokens)")
        yield


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))
    for name in ("smollm2-135m-instruct-gguf", "smollm2-360m-instruct-int4", "student-cqa-fp16"):
        (tmp_path / "cache" / name).mkdir(parents=True)
        (tmp_path / "cache" / name / "manifest.json").write_text("{}")
    store = Store(tmp_path / "chats.sqlite3")
    store.new_conversation(title="Tokenizers, briefly")
    store.new_conversation(title="A haiku about the sea")
    yield store
    store.close()


def chat_app(store, engine=None) -> ChatApp:
    return ChatApp(engine or CannedEngine([ANSWER]), store, settings=ChatSettings(temperature=0.0, max_tokens=200))


async def ask(pilot) -> None:
    await pilot.press("ctrl+n", *QUESTION, "enter")
    while pilot.app.generating:
        await pilot.pause(0.02)
    await pilot.pause(0.1)


def test_main_screen_after_a_reply(snap_compare, store):
    assert snap_compare(chat_app(store), terminal_size=SIZE, run_before=ask)


def test_help_screen(snap_compare, store):
    assert snap_compare(chat_app(store), terminal_size=SIZE, press=["f1"])


def test_settings_screen(snap_compare, store):
    assert snap_compare(chat_app(store), terminal_size=SIZE, press=["f4"])


def test_package_picker(snap_compare, store):
    assert snap_compare(chat_app(store), terminal_size=SIZE, press=["ctrl+o"])


def test_engine_error_in_the_chat(snap_compare, store):
    assert snap_compare(chat_app(store, RefusingEngine([])), terminal_size=SIZE, run_before=ask)
