"""The chat screen's widgets: messages, the prompt input, the conversation list, the status bar."""
from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Markdown, OptionList, Static, TextArea
from textual.widgets.markdown import MarkdownStream
from textual.widgets.option_list import Option

from slm.tui.messages import PromptSubmitted
from slm.tui.store import Conversation, ReplyStats

FINISH_NOTES = {"cancelled": "stopped", "length": "cut at max tokens or context", "stop": ""}


def stats_line(s: ReplyStats) -> str:
    """'48 tokens · 51.2 tok/s · TTFT 0.09 s' plus why it ended, if not a natural stop."""
    line = f"{s.generated_tokens} tokens · {s.tokens_per_s:.1f} tok/s · TTFT {s.ttft_s:.2f} s"
    note = FINISH_NOTES.get(s.finish_reason, s.finish_reason)
    return f"{line} · {note}" if note else line


class UserMessage(Markdown):
    """What the user wrote."""

    DEFAULT_CSS = """
    UserMessage {
        background: $primary 10%;
        margin: 1 8 0 1;
        padding: 1 2 0 2;
    }
    """


class Reply(Markdown):
    """The model's answer; streams in through a MarkdownStream while it is generated."""

    DEFAULT_CSS = """
    Reply {
        border: wide $success;
        border-title-color: $success;
        border-subtitle-color: $text-muted;
        background: $success 5%;
        margin: 1 1 0 8;
        padding: 1 2 0 2;
    }
    Reply.-failed { border: wide $error; }
    """

    def __init__(self, markdown: str = "", *, author: str, stats: ReplyStats | None = None) -> None:
        super().__init__(markdown)
        self.border_title = author
        self._stream: MarkdownStream | None = None
        self.border_subtitle = stats_line(stats) if stats is not None else "writing…"

    @property
    def stream(self) -> MarkdownStream:
        if self._stream is None:
            self._stream = Markdown.get_stream(self)
        return self._stream

    async def finish(self, stats: ReplyStats) -> None:
        """Flush what is still buffered and show the generation's numbers."""
        if self._stream is not None:
            await self._stream.stop()
        self.border_subtitle = stats_line(stats)


class ErrorMessage(Static):
    """An error from the engine, shown in the chat (not stored)."""

    DEFAULT_CSS = """
    ErrorMessage {
        color: $text-error;
        background: $error 10%;
        border-left: thick $error;
        margin: 1 1 0 8;
        padding: 0 1;
    }
    """


class PromptInput(TextArea):
    """A multi-line input: Enter sends, Ctrl+J (or Shift/Alt+Enter) breaks the line, Up/Down at the
    first/last line walk through past prompts."""

    BINDINGS = [Binding("ctrl+j,shift+enter,alt+enter", "newline", "New line", show=False)]
    DEFAULT_CSS = """
    PromptInput {
        height: auto;
        max-height: 10;
        min-height: 3;
        margin: 1 1 0 1;
        border: tall $primary 50%;
    }
    PromptInput:focus { border: tall $primary; }
    """

    def __init__(self, history: list[str], **kwargs) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", compact=False, **kwargs)
        self.sent = history
        self._index = len(history)      # len(history) = the draft being written, not a past prompt
        self._draft = ""

    def remember(self, text: str) -> None:
        """Append a sent prompt to the history and go back to an empty draft."""
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self._index, self._draft = len(self.sent), ""
        self.clear()

    async def _on_key(self, event) -> None:
        if event.key == "enter":        # TextArea would insert a newline: send instead
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(PromptSubmitted(self.text))
            return
        await super()._on_key(event)

    def action_newline(self) -> None:
        self.insert("\n")

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0 and self._index > 0:
            if self._index == len(self.sent):
                self._draft = self.text
            self._index -= 1
            self.load_text(self.sent[self._index])
            self.move_cursor((0, 0))
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == self.document.line_count - 1 and self._index < len(self.sent):
            self._index += 1
            self.load_text(self.sent[self._index] if self._index < len(self.sent) else self._draft)
            self.move_cursor(self.document.end)
            return
        super().action_cursor_down(select)


class ConversationList(OptionList):
    """The saved conversations, most recent first; an option's id is the conversation id."""

    DEFAULT_CSS = """
    ConversationList { height: 1fr; border: none; background: $surface; }
    """

    def show(self, conversations: list[Conversation], current_id: int | None) -> None:
        self.clear_options()
        self.add_options(Option(c.title, id=str(c.id)) for c in conversations)
        ids = [c.id for c in conversations]
        self.highlighted = ids.index(current_id) if current_id in ids else None


class StatusBar(Widget):
    """Speed, time to first token, tokens in context, and the KV budget as a meter."""

    DEFAULT_CSS = """
    StatusBar { height: 1; padding: 0 1; background: $panel; color: $text-muted; }
    """
    METER_CELLS = 16

    stats: reactive[ReplyStats | None] = reactive(None)
    capacity: reactive[int] = reactive(0)
    context: reactive[int] = reactive(0)       # the model's context; more than `capacity` says the cache is capped
    policy: reactive[str] = reactive("none")
    kv_dtype: reactive[str] = reactive("")     # "int8", "int4", "fp16": a cache not stored at fp32 ("" = fp32)
    generating: reactive[bool] = reactive(False)

    def render(self) -> Text:
        s = self.stats
        out = Text()
        if self.generating:
            out.append("● generating ", style="bold green")
        if s is None:
            out.append("no reply yet")
            cached, capacity, evicted, policy = 0, self.capacity, 0, self.policy
        else:
            out.append(f"{s.tokens_per_s:.1f} tok/s · TTFT {s.ttft_s:.2f} s · {s.generated_tokens} tokens")
            cached, capacity, evicted, policy = s.cached_tokens, s.capacity_tokens, s.evicted_tokens, s.policy
        out.append(f"  │  KV {self.kv_dtype} " if self.kv_dtype else "  │  KV ")
        fill = cached / capacity if capacity else 0.0
        cells = round(fill * self.METER_CELLS)
        colour = "green" if fill < 0.7 else "yellow" if fill < 0.9 else "red"
        out.append("█" * cells, style=colour)
        out.append("░" * (self.METER_CELLS - cells), style="dim")
        out.append(f" {cached}/{capacity} tokens")
        if self.context > capacity:
            out.append(f" (capped: context {self.context}, --kv-budget)")
        out.append(f" · {evicted} evicted (policy {policy})")
        return out
