"""The chat app: an in-process engine, streaming markdown, conversations kept in SQLite.

    from slm.tui.app import run_chat
    run_chat(Engine("path/to/package"))

Data flow: PromptInput ─► PromptSubmitted ─► generate_reply (a thread worker) ─► engine.generate
─► call_from_thread(show_text) once a frame ─► Reply's MarkdownStream + StatusBar
─► call_from_thread(save_reply) at the end ─► the store.
The engine is injected (a fake one in the snapshot tests); `engine_factory` opens a picked package.
"""
from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, Label, OptionList
from textual.worker import WorkerCancelled, WorkerFailed

from slm.runtime.events import GenerationEvent
from slm.runtime.sampling import SamplingParams
from slm.core.errors import ProviderFallbackWarning, SlmError
from slm.core.package import KV_DTYPE_NAMES
from slm.tui.messages import EngineFailed, EngineLoaded, PromptSubmitted
from slm.tui.screens import ConfirmScreen, HelpScreen, PackagePicker, RenameScreen, SettingsScreen
from slm.tui.store import UNTITLED, ChatSettings, Conversation, ReplyStats, Store, default_db_path
from slm.tui.widgets import ConversationList, ErrorMessage, PromptInput, Reply, StatusBar, UserMessage

if TYPE_CHECKING:
    from slm.runtime import Engine

TITLE_CHARS = 40
FRAME_S = 1 / 30        # the most often streamed text crosses to the UI


class ChatApp(App):
    """Chat with a small language model that runs inside this process."""

    TITLE = "slm"
    CSS = """
    #sidebar { width: 28; border-right: vkey $primary 30%; }
    #sidebar Label { padding: 0 1; color: $text-muted; text-style: bold; }
    #chat-view { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "stop", "Stop", tooltip="stop the reply being written (it is kept)"),
        Binding("ctrl+n", "new_chat", "New", tooltip="start a new conversation"),
        Binding("f2", "rename", "Rename", tooltip="rename this conversation"),
        Binding("f3", "copy_reply", "Copy reply", tooltip="copy the last reply to the clipboard"),
        Binding("f4", "settings", "Settings", tooltip="system prompt and sampling of this conversation"),
        Binding("f8", "delete", "Delete", tooltip="delete this conversation (asks first)"),
        Binding("ctrl+o", "pick_package", "Model", tooltip="open another model package"),
        Binding("f1", "help", "Help", tooltip="this help"),
    ]
    INPUT_KEYS = [("enter", "send the message"), ("ctrl+j / shift+enter", "new line in the message"),
                  ("up / down", "earlier / later sent messages"),
                  ("tab / shift+tab", "move between conversations, messages and input"),
                  ("ctrl+q", "quit")]

    def __init__(self, engine: Engine | None, store: Store, *, engine_factory: Callable[[Path], Engine] | None = None,
                 system_prompt: str | None = None, settings: ChatSettings = ChatSettings()) -> None:
        super().__init__()
        self.engine = engine
        self.store = store
        self.engine_factory = engine_factory
        self.system_prompt = system_prompt
        self.default_settings = settings
        self.chat: Conversation | None = None
        self.cancel = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Label("Conversations")
                yield ConversationList(id="conversations")
            with Vertical(id="main"):
                yield VerticalScroll(id="chat-view")
                yield PromptInput(self.store.recent_prompts(), id="prompt",
                                  placeholder="Message (Enter sends, Ctrl+J new line, F1 help)")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.show_engine()
        chats = self.store.conversations()
        if self.system_prompt is not None or not chats:
            await self.open_chat(self.new_conversation())
        else:
            await self.open_chat(chats[0])
        self.query_one(PromptInput).focus()

    async def action_quit(self) -> None:
        """Stop a running generation first, so that its partial reply is saved."""
        await self.stop_generation()
        self.exit()

    def exit(self, *args, **kwargs) -> None:
        self.cancel.set()       # however the app ends, the generation thread stops at its next token
        super().exit(*args, **kwargs)

    # --- showing things -------------------------------------------------------------------------------
    @property
    def generating(self) -> bool:
        return any(not w.is_finished for w in self.workers if w.group == "generation")

    @property
    def model_name(self) -> str:
        return self.engine.path.name if self.engine is not None else "no model"

    def show_engine(self) -> None:
        status = self.query_one(StatusBar)
        if self.engine is not None:
            status.capacity, status.policy = self.engine.capacity, self.engine.kv_policy
            status.context = self.engine.manifest.kv.default_capacity    # over capacity: capped (4,096 by default)
            dtype = KV_DTYPE_NAMES.get(getattr(self.engine, "kv_dtype", "float32"), "")
            status.kv_dtype = "" if dtype == "fp32" else dtype
        self.title = f"slm · {self.model_name}"

    def show_chat_list(self) -> None:
        self.query_one(ConversationList).show(self.store.conversations(), self.chat.id if self.chat else None)
        self.sub_title = self.chat.title if self.chat else ""

    async def open_chat(self, chat: Conversation) -> None:
        """Show one conversation's messages (not streamed) and its last numbers."""
        await self.stop_generation()
        self.chat = chat
        view = self.query_one("#chat-view", VerticalScroll)
        await view.remove_children()
        messages = self.store.messages(chat.id)
        await view.mount_all(UserMessage(m.content) if m.role == "user"
                             else Reply(m.content, author=self.model_name, stats=m.stats) for m in messages)
        view.anchor()
        self.query_one(StatusBar).stats = next((m.stats for m in reversed(messages) if m.stats), None)
        self.show_chat_list()

    def new_conversation(self) -> Conversation:
        return self.store.new_conversation(system_prompt=self.system_prompt or "", settings=self.default_settings)

    def conversation_messages(self) -> list[dict]:
        """The full conversation for the engine (its cache prefills only what is new)."""
        system = [{"role": "system", "content": self.chat.system_prompt}] if self.chat.system_prompt else []
        return system + [{"role": m.role, "content": m.content} for m in self.store.messages(self.chat.id)]

    # --- sending and generating -----------------------------------------------------------------------
    @on(PromptSubmitted)
    async def send(self, event: PromptSubmitted) -> None:
        if self.generating:
            self.notify("A reply is still being written: Esc stops it.", severity="warning")
            return
        if self.engine is None:
            self.notify("No model is open: Ctrl+O picks a package.", severity="error")
            return
        prompt = self.query_one(PromptInput)
        prompt.remember(event.text)
        chat = self.chat
        self.store.add_message(chat.id, "user", event.text)
        if chat.title == UNTITLED:
            self.chat = self.store.update_conversation(chat, title=_title_from(event.text))
        self.show_chat_list()
        view = self.query_one("#chat-view", VerticalScroll)
        reply = Reply(author=self.model_name)
        await view.mount_all([UserMessage(event.text), reply])
        view.anchor()
        self.cancel = threading.Event()
        self.query_one(StatusBar).generating = True
        self.generate_reply(self.engine, chat.id, self.conversation_messages(), chat.settings, reply, self.cancel)

    @work(thread=True, exclusive=True, group="generation")
    def generate_reply(self, engine: Engine, conversation_id: int, messages: list[dict], settings: ChatSettings,
                       reply: Reply, cancel: threading.Event) -> None:
        """In a thread: the text, at most every FRAME_S, then the end, cross to the UI with call_from_thread.

        Batching keeps the engine at full speed: call_from_thread waits for the UI, once a frame, not
        once a token.
        """
        text, pending, last, shown_at = [], [], None, 0.0
        try:
            for event in engine.generate(messages, params=settings.params(), max_tokens=settings.max_tokens,
                                         cancel=cancel):
                text.append(event.text)
                pending.append(event.text)
                last = event
                if time.monotonic() - shown_at >= FRAME_S and self.is_running:
                    self.call_from_thread(self.show_text, reply, "".join(pending), event)
                    pending, shown_at = [], time.monotonic()
        except (SlmError, ValueError, RuntimeError) as e:   # RuntimeError: ONNX Runtime failed mid-run
            if self.is_running:
                self.call_from_thread(self.show_failure, reply, conversation_id, str(e))
            return
        if self.is_running:
            self.call_from_thread(self.show_text, reply, "".join(pending), last)
            self.call_from_thread(self.save_reply, reply, conversation_id, "".join(text), ReplyStats.from_event(last))

    async def show_text(self, reply: Reply, text: str, event: GenerationEvent) -> None:
        if reply.is_attached:
            await reply.stream.write(text)
        self.query_one(StatusBar).stats = ReplyStats.from_event(event)

    async def save_reply(self, reply: Reply, conversation_id: int, text: str, stats: ReplyStats) -> None:
        self.store.add_message(conversation_id, "assistant", text, stats)
        self.query_one(StatusBar).generating = False
        if reply.is_attached:
            await reply.finish(stats)
        if stats.finish_reason == "length" and stats.cached_tokens >= stats.capacity_tokens - 1:
            self.notify("The KV budget is full: start a new conversation (Ctrl+N) or raise --kv-budget.",
                        severity="warning")
        self.show_chat_list()

    async def show_failure(self, reply: Reply, conversation_id: int, error: str) -> None:
        """The engine refused: the prompt is not kept but goes back into the input; the error shows in the chat."""
        self.query_one(StatusBar).generating = False
        messages = self.store.messages(conversation_id)
        if messages and messages[-1].role == "user":
            self.store.delete_message(messages[-1].id)
            self.query_one(PromptInput).load_text(messages[-1].content)
            await self.query(UserMessage).last().remove()
        await reply.remove()
        view = self.query_one("#chat-view", VerticalScroll)
        await view.mount(ErrorMessage(f"error: {error}\n(your message is back in the input)"))
        view.anchor()

    async def stop_generation(self) -> None:
        """Cancel a running generation and wait until its reply is saved."""
        self.cancel.set()
        running = [w for w in self.workers if w.group == "generation" and not w.is_finished]
        if running:
            with contextlib.suppress(WorkerFailed, WorkerCancelled):
                await self.workers.wait_for_complete(running)

    def action_stop(self) -> None:
        if self.generating:
            self.cancel.set()

    # --- conversations --------------------------------------------------------------------------------
    @on(OptionList.OptionSelected, "#conversations")
    async def switch_chat(self, event: OptionList.OptionSelected) -> None:
        if self.chat is None or int(event.option.id) != self.chat.id:
            await self.open_chat(self.store.conversation(int(event.option.id)))
        self.query_one(PromptInput).focus()

    async def action_new_chat(self) -> None:
        await self.open_chat(self.new_conversation())
        self.query_one(PromptInput).focus()

    def action_rename(self) -> None:
        def rename(title: str | None) -> None:
            if title:
                self.chat = self.store.update_conversation(self.chat, title=title)
                self.show_chat_list()
        self.push_screen(RenameScreen(self.chat.title), rename)

    def action_delete(self) -> None:
        async def delete(yes: bool | None) -> None:
            if yes:
                await self.stop_generation()
                self.store.delete_conversation(self.chat.id)
                chats = self.store.conversations()
                await self.open_chat(chats[0] if chats else self.new_conversation())
        self.push_screen(ConfirmScreen(f"Delete “{self.chat.title}” and its messages?"), delete)

    def action_settings(self) -> None:
        def save(answer: tuple[str, ChatSettings] | None) -> None:
            if answer:
                self.chat = self.store.update_conversation(self.chat, system_prompt=answer[0], settings=answer[1])
                self.notify("Saved; the next reply uses these settings.")
        self.push_screen(SettingsScreen(self.chat.system_prompt, self.chat.settings), save)

    def action_copy_reply(self) -> None:
        replies = [m for m in self.store.messages(self.chat.id) if m.role == "assistant"]
        if not replies:
            self.notify("No reply to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(replies[-1].content)
        self.notify(f"Copied the last reply ({len(replies[-1].content)} characters).")

    def action_help(self) -> None:
        keys = [(b.key, b.tooltip or b.description) for b in self.BINDINGS] + self.INPUT_KEYS
        self.push_screen(HelpScreen(keys))

    # --- the package picker ---------------------------------------------------------------------------
    def action_pick_package(self) -> None:
        from slm.core.paths import cache_dir, installed_packages

        def open_package(path: Path | None) -> None:
            if path is not None and path != current:
                self.notify(f"Opening {path.name}…")
                self.load_engine(path)
        current = self.engine.path if self.engine is not None else None
        self.push_screen(PackagePicker(installed_packages(), current, cache_dir()), open_package)

    @work(thread=True, exclusive=True, group="engine")
    def load_engine(self, path: Path) -> None:
        if self.engine_factory is None:
            self.post_message(EngineFailed(path.name, "this chat was started without a way to open packages"))
            return
        try:
            with warnings.catch_warnings():     # use_engine's notice says it, on the screen not on stderr
                warnings.simplefilter("ignore", ProviderFallbackWarning)
                engine = self.engine_factory(path)
            self.post_message(EngineLoaded(engine))
        except (SlmError, ValueError, RuntimeError, OSError) as e:
            self.post_message(EngineFailed(path.name, str(e)))

    @on(EngineLoaded)
    async def use_engine(self, event: EngineLoaded) -> None:
        await self.stop_generation()
        self.engine = event.engine
        self.show_engine()
        self.notify(f"Now running {self.engine.path.name}: {self.engine.provider_note}")

    @on(EngineFailed)
    def show_engine_failure(self, event: EngineFailed) -> None:
        self.notify(event.error, title=f"{event.package} did not open", severity="error", timeout=10)


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1] + "…"


def run_chat(engine: Engine | None = None, *, system_prompt: str | None = None, db_path: Path | None = None,
             params: SamplingParams | None = None, max_tokens: int | None = None,
             engine_factory: Callable[[Path], Engine] | None = None) -> None:
    """Open the chat on `engine` (None: no model yet, the user picks one with Ctrl+O).

    `params`/`max_tokens` are the sampling of new conversations; `engine_factory` opens a picked
    package (default: `Engine(path, engine.options)`, every option of `engine`).
    """
    defaults = ChatSettings()
    settings = ChatSettings.from_params(params, max_tokens or defaults.max_tokens) if params else defaults
    if engine_factory is None:
        from slm.runtime import Engine, EngineOptions
        options = getattr(engine, "options", None) or EngineOptions()

        def engine_factory(path: Path) -> Engine:
            return Engine(path, options)        # every option of `engine`: budget, policy, dtype, threads...
    store = Store(db_path or default_db_path())
    try:
        ChatApp(engine, store, engine_factory=engine_factory, system_prompt=system_prompt, settings=settings).run()
    finally:
        store.close()
