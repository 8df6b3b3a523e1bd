"""The chat app under App.run_test() and Pilot, driving a real tiny package (random weights, SmolLM2's
tokenizer and chat template: gibberish, but real tokens stream through the real engine)."""
from __future__ import annotations

import asyncio
import shutil
import threading

import pytest

pytest.importorskip("textual")

from slm.runtime import Engine  # noqa: E402
from slm.tui.app import ChatApp  # noqa: E402
from slm.tui.screens import HelpScreen, PackagePicker, SettingsScreen  # noqa: E402
from slm.tui.store import ChatSettings, Store  # noqa: E402
from slm.tui.widgets import ErrorMessage, PromptInput, Reply, StatusBar, UserMessage  # noqa: E402

GREEDY = ChatSettings(temperature=0.0, repetition_penalty=1.0, max_tokens=64)
SIZE = (100, 30)


class GatedEngine:
    """The real engine, except that generation pauses before its `after`-th event until the test
    opens the gate: the test can act mid-stream however fast the tiny model is."""

    def __init__(self, engine: Engine, after: int = 4):
        self.engine, self.after = engine, after
        self.paused, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, *args, **kwargs):
        for i, event in enumerate(self.engine.generate(*args, **kwargs), 1):
            if i == self.after:
                self.paused.set()
                self.gate.wait(timeout=30)
            yield event


@pytest.fixture(scope="module")
def engine(tiny_package) -> Engine:
    return Engine(tiny_package)


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_DATA", str(tmp_path / "data"))
    from slm.tui.store import default_db_path
    return default_db_path()


def run(scenario):
    asyncio.run(asyncio.wait_for(scenario, timeout=60))


async def until(pilot, condition, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not met in time")


async def wait_event(pilot, event: threading.Event) -> None:
    await until(pilot, event.is_set)


async def send(pilot, text: str) -> None:
    await pilot.press(*text, "enter")


def test_send_streams_reply_and_keys_work_meanwhile(engine, db):
    gated = GatedEngine(engine)
    store = Store(db)

    async def scenario():
        app = ChatApp(gated, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "Hello there")
            await wait_event(pilot, gated.paused)          # 3 tokens out, the 4th held back
            reply = app.query_one(Reply)
            await until(pilot, lambda: reply.source != "")
            streamed = reply.source
            assert app.generating and app.query_one(StatusBar).generating
            assert 1 <= app.query_one(StatusBar).stats.generated_tokens < gated.after

            # the UI keeps handling keys while the worker streams
            await pilot.press("a", "b", "c")
            assert app.query_one(PromptInput).text == "abc"
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            assert app.generating

            gated.gate.set()
            await until(pilot, lambda: not app.generating)
            await pilot.pause(0.1)
            final = app.query_one(Reply).source
            assert final.startswith(streamed) and len(final) > len(streamed)
            stats = app.query_one(StatusBar).stats
            assert stats.finish_reason in ("stop", "length") and stats.generated_tokens > 3
            assert "tok/s" in str(reply.border_subtitle)

            # copy the last answer
            await pilot.press("f3")
            messages = store.messages(app.chat.id)
            assert [m.role for m in messages] == ["user", "assistant"]
            assert app.clipboard == messages[-1].content != ""
            assert messages[-1].stats.generated_tokens == stats.generated_tokens
    try:
        run(scenario())
    finally:
        gated.gate.set()
        store.close()


def test_escape_cancels_a_running_generation(engine, db):
    gated = GatedEngine(engine, after=3)
    store = Store(db)

    async def scenario():
        app = ChatApp(gated, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "Tell me a long story")
            await wait_event(pilot, gated.paused)
            await pilot.press("escape")
            gated.gate.set()                           # the engine sees the cancel at its next token
            await until(pilot, lambda: not app.generating)
            stats = app.query_one(StatusBar).stats
            assert stats.finish_reason == "cancelled"
            assert stats.generated_tokens < GREEDY.max_tokens
            assert "stopped" in str(app.query_one(Reply).border_subtitle)
            saved = store.messages(app.chat.id)[-1]
            assert saved.role == "assistant" and saved.stats.finish_reason == "cancelled"

            # the conversation goes on after a cancel
            await send(pilot, "Go on")
            await until(pilot, lambda: len(store.messages(app.chat.id)) == 4)
    try:
        run(scenario())
    finally:
        gated.gate.set()
        store.close()


def test_switch_conversations_and_restart_finds_history(engine, db):
    async def first_session():
        store = Store(db)
        app = ChatApp(engine, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "First chat")
            await until(pilot, lambda: len(store.messages(app.chat.id)) == 2)
            first = app.chat.id
            await pilot.press("ctrl+n")
            assert app.chat.id != first and not app.query(UserMessage)
            await send(pilot, "Second chat")
            await until(pilot, lambda: len(store.messages(app.chat.id)) == 2)
            assert [c.title for c in store.conversations()] == ["Second chat", "First chat"]

            # back to the first: pick it in the list with the keyboard
            await pilot.press("shift+tab", "shift+tab")   # the input -> the messages -> the conversation list
            await pilot.press("down", "enter")
            await until(pilot, lambda: app.chat.id == first)
            assert [m.source for m in app.query(UserMessage)] == ["First chat"]
            assert len(app.query(Reply)) == 1
            assert app.focused is app.query_one(PromptInput)
            await send(pilot, "More")                # the engine re-prefills this conversation
            await until(pilot, lambda: len(store.messages(first)) == 4)
        store.close()
        return first

    async def second_session(first):
        store = Store(db)
        app = ChatApp(engine, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.chat.id == first                # the most recently used conversation
            assert [m.source for m in app.query(UserMessage)] == ["First chat", "More"]
            assert app.query(Reply).last().source == store.messages(first)[-1].content
            assert app.query_one(StatusBar).stats is not None
            await pilot.press("up")                    # the input's history survives too
            assert app.query_one(PromptInput).text == "More"
            await pilot.press("up")
            assert app.query_one(PromptInput).text == "Second chat"
            await pilot.press("down", "down")
            assert app.query_one(PromptInput).text == ""
        store.close()

    async def both():
        await second_session(await first_session())
    run(both())


def test_status_line_says_when_the_cache_is_smaller_than_the_context(tiny_package, engine, db):
    store = Store(db)

    async def scenario():
        for eng, capped in ((Engine(tiny_package, kv_budget=64), True), (engine, False)):
            app = ChatApp(eng, store, settings=GREEDY)
            async with app.run_test(size=(140, 30)) as pilot:
                await pilot.pause(0.05)
                line = str(app.query_one(StatusBar).render())
                context = eng.manifest.kv.default_capacity      # 512 for the tiny model
                assert f"0/{eng.capacity} tokens" in line
                assert (f"(capped: context {context}, --kv-budget)" in line) == capped, line
    try:
        run(scenario())
    finally:
        store.close()


def test_over_budget_prompt_shows_an_error_not_a_traceback(tiny_package, db):
    small = Engine(tiny_package, kv_budget=16)       # the chat template alone needs more than 16 tokens
    store = Store(db)

    async def scenario():
        app = ChatApp(small, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "Hello")
            await until(pilot, lambda: app.query(ErrorMessage))
            assert "KV budget" in str(app.query_one(ErrorMessage).render())
            assert not app.query(Reply)
            assert store.messages(app.chat.id) == []            # the refused prompt is not kept...
            assert app.query_one(PromptInput).text == "Hello"   # ...it is back in the input
            assert not app.generating
    try:
        run(scenario())
    finally:
        store.close()


def test_rename_delete_and_settings(engine, db):
    store = Store(db)

    async def scenario():
        app = ChatApp(engine, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f2", "ctrl+u", *"Physics", "enter")
            assert store.conversation(app.chat.id).title == "Physics" == app.sub_title

            await pilot.press("f4")
            assert isinstance(app.screen, SettingsScreen)
            await pilot.click("#temperature")
            await pilot.press("end", "ctrl+u", *"hot", "ctrl+s")
            assert isinstance(app.screen, SettingsScreen)           # refused, and it says why
            assert "temperature" in str(app.screen.query_one("#error").render())
            await pilot.press("end", "ctrl+u", *"0.7", "ctrl+s")
            assert not isinstance(app.screen, SettingsScreen)
            assert store.conversation(app.chat.id).settings.temperature == 0.7

            doomed = app.chat.id
            await pilot.press("f8", "y")
            await until(pilot, lambda: doomed not in [c.id for c in store.conversations()])
            assert app.chat is not None and app.chat.id != doomed   # a fresh one replaces it
    try:
        run(scenario())
    finally:
        store.close()


def test_quit_mid_generation_saves_the_partial_reply(engine, db):
    gated = GatedEngine(engine, after=3)
    store = Store(db)

    async def scenario():
        app = ChatApp(gated, store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "Hello")
            await wait_event(pilot, gated.paused)
            threading.Timer(0.2, gated.gate.set).start()    # ctrl+q waits for the engine's next token
            await pilot.press("ctrl+q")
        chat = store.conversations()[0]
        assert [(m.role, m.stats and m.stats.finish_reason) for m in store.messages(chat.id)] == \
            [("user", None), ("assistant", "cancelled")]
    try:
        run(scenario())
    finally:
        gated.gate.set()
        store.close()


def test_package_picker_opens_a_package_or_says_why_not(tiny_package, db, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_package, cache / "another-tiny")
    (cache / "broken").mkdir(parents=True)
    (cache / "broken" / "manifest.json").write_text("{}")
    monkeypatch.setenv("SLM_CACHE", str(cache))
    store = Store(db)

    def notified(app, text: str) -> bool:
        return any(text in f"{n.title} {n.message}" for n in app._notifications)

    async def scenario():
        app = ChatApp(None, store, engine_factory=Engine, settings=GREEDY)     # no model open yet
        async with app.run_test(size=SIZE) as pilot:
            assert "no model" in app.title
            await send(pilot, "Hi")
            assert notified(app, "No model is open") and store.messages(app.chat.id) == []

            await pilot.press("ctrl+o")
            assert isinstance(app.screen, PackagePicker)
            await pilot.press("down", "enter")          # "broken" sorts after "another-tiny"
            await until(pilot, lambda: notified(app, "broken did not open"))
            assert app.engine is None

            await pilot.press("ctrl+o", "enter")        # "another-tiny"
            await until(pilot, lambda: app.engine is not None)
            assert app.engine.path.name == "another-tiny" and "another-tiny" in app.title
            await pilot.press("enter")                  # "Hi" is still in the input
            await until(pilot, lambda: len(store.messages(app.chat.id)) == 2)
    try:
        run(scenario())
    finally:
        store.close()


def test_multiline_input(db):
    from slm.tui.screenshot import CannedEngine
    store = Store(db)

    async def scenario():
        app = ChatApp(CannedEngine(["ok"]), store, settings=GREEDY)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press(*"one", "ctrl+j", *"two", "enter")
            await until(pilot, lambda: len(store.messages(app.chat.id)) == 2)
            assert store.messages(app.chat.id)[0].content == "one\ntwo"
            assert app.query_one(PromptInput).text == ""
            await pilot.press("enter")                  # an empty input sends nothing
            await pilot.pause()
            assert len(store.messages(app.chat.id)) == 2
            await pilot.press("up")                     # a multi-line message comes back whole
            assert app.query_one(PromptInput).text == "one\ntwo"
    try:
        run(scenario())
    finally:
        store.close()


def test_a_model_switch_without_a_factory_keeps_every_engine_option(tiny_package, db, tmp_path, monkeypatch):
    """An application starts the chat from Python with a 64-token int8 budget and streaming eviction,
    and no factory: the package picked with Ctrl+O opens with the same options (capacity, policy,
    dtype, eviction sizes, threads), not the 4,096-slot default."""
    from slm.runtime import EngineOptions
    from slm.tui.app import run_chat
    cache = tmp_path / "cache"
    shutil.copytree(tiny_package, cache / "another-tiny")
    monkeypatch.setenv("SLM_CACHE", str(cache))
    options = EngineOptions(threads=1, kv_budget=64, kv_policy="streaming", kv_dtype="int8", evict_chunk=8,
                            keep_recent=4, lookup=2)
    first = Engine(tiny_package, options)
    seen = {}

    async def scenario(app):
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            seen["before"] = str(app.query_one(StatusBar).render())
            await pilot.press("ctrl+o", "enter")        # "another-tiny", the only installed package
            await until(pilot, lambda: app.engine is not first)
            await pilot.pause()
            seen["after"] = str(app.query_one(StatusBar).render())
            seen["engine"] = app.engine

    monkeypatch.setattr(ChatApp, "run", lambda self: run(scenario(self)))
    run_chat(first)
    after = seen["engine"]
    assert after.path.name == "another-tiny" and after.options == options
    assert (after.capacity, after.kv_policy, after.kv_dtype) == (64, "streaming", "int8")
    assert after.eviction_for(after.cache).evict_chunk == 8 and after.lookup.max_draft == 2
    assert "0/64 tokens" in seen["after"] and "policy streaming" in seen["after"] and "KV int8" in seen["after"]
    assert seen["after"] == seen["before"]
