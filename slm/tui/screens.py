"""Modal screens: help, rename, confirm delete, conversation settings, package picker.

Each returns its answer with `dismiss(...)`; the app passes a callback to `push_screen`.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, OptionList, TextArea
from textual.widgets.option_list import Option

from slm.tui.store import ChatSettings

MODAL_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 72; height: auto; max-height: 90%;
    border: thick $primary; background: $surface; padding: 1 2;
}}
{name} .title {{ text-style: bold; margin-bottom: 1; }}
{name} .hint {{ color: $text-muted; margin-top: 1; }}
{name} .error {{ color: $text-error; }}
{name} Horizontal {{ height: auto; align-horizontal: right; margin-top: 1; }}
{name} Button {{ margin-left: 1; }}
"""


class HelpScreen(ModalScreen[None]):
    """Every key binding of the chat, read from the bindings themselves."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]
    DEFAULT_CSS = MODAL_CSS.format(name="HelpScreen") + """
    HelpScreen > Vertical { width: 84; }
    HelpScreen DataTable { height: auto; }
    """

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("slm chat: keys", classes="title")
            yield DataTable(show_cursor=False, zebra_stripes=True)
            yield Label("Esc, F1 or q closes this help.", classes="hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("key", "does")
        table.add_rows(self.keys)


class RenameScreen(ModalScreen[str | None]):
    """A new title for the conversation; None if the user backs out."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = MODAL_CSS.format(name="RenameScreen")

    def __init__(self, title: str) -> None:
        super().__init__()
        self.old_title = title

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Rename conversation", classes="title")
            yield Input(self.old_title, placeholder="title")
            yield Label("Enter saves, Esc cancels.", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no."""

    BINDINGS = [Binding("escape,n", "dismiss(False)", "No"), Binding("y", "dismiss(True)", "Yes")]
    DEFAULT_CSS = MODAL_CSS.format(name="ConfirmScreen")

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, classes="title")
            with Horizontal():
                yield Button("Cancel (n)", id="no")
                yield Button("Delete (y)", id="yes", variant="error")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class SettingsScreen(ModalScreen[tuple[str, ChatSettings] | None]):
    """The conversation's system prompt and sampling settings; invalid values are named, not saved."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("ctrl+s", "save", "Save")]
    DEFAULT_CSS = MODAL_CSS.format(name="SettingsScreen") + """
    SettingsScreen TextArea { height: 4; }
    SettingsScreen Grid { grid-size: 4; grid-columns: 1fr 12 1fr 12; grid-rows: 1; grid-gutter: 1 2;
                          height: auto; margin-top: 1; }
    """
    NUMBERS = [f.name for f in fields(ChatSettings)]

    def __init__(self, system_prompt: str, settings: ChatSettings) -> None:
        super().__init__()
        self.system_prompt = system_prompt
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Conversation settings", classes="title")
            yield Label("System prompt")
            yield TextArea(self.system_prompt, id="system")
            with Grid():
                for name in self.NUMBERS:
                    value = getattr(self.settings, name)
                    yield Label(name.replace("_", " "))
                    yield Input("" if value is None else str(value), id=name, compact=True,
                                placeholder="none" if name == "seed" else "")
            yield Label("", id="error", classes="error")
            yield Label("temperature 0 = greedy; empty seed = random. Ctrl+S saves.", classes="hint")
            with Horizontal():
                yield Button("Cancel", id="cancel")
                yield Button("Save", id="save", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.dismiss(None)

    def action_save(self) -> None:
        try:
            settings = ChatSettings(**{name: self._number(name) for name in self.NUMBERS})
            settings.validate()
        except ValueError as e:
            self.query_one("#error", Label).update(str(e))
            return
        self.dismiss((self.query_one("#system", TextArea).text.strip(), settings))

    def _number(self, name: str) -> int | float | None:
        text = self.query_one(f"#{name}", Input).value.strip()
        kind = type(getattr(ChatSettings(), name))
        if name == "seed":
            kind = int
            if not text:
                return None
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not {'an integer' if kind is int else 'a number'}") from None


class PackagePicker(ModalScreen[Path | None]):
    """The packages installed in the user cache; the chosen folder, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = MODAL_CSS.format(name="PackagePicker") + "PackagePicker OptionList { height: auto; max-height: 16; }"

    def __init__(self, packages: list[Path], current: Path | None, cache: Path) -> None:
        super().__init__()
        self.packages = packages
        self.current = current
        self.cache = cache

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Open a model package", classes="title")
            if self.packages:
                yield OptionList(*(Option(self._label(p), id=str(i)) for i, p in enumerate(self.packages)))
                yield Label("Enter opens; the chat history stays.", classes="hint")
            else:
                yield Label(f"No packages in {self.cache}.\nRun `slm pull` for the default model, or "
                            f"`slm export SOURCE {self.cache}/NAME` for another.", classes="error")
            yield Label("Esc closes.", classes="hint")

    def _label(self, path: Path) -> str:
        return f"{path.name}  (open now)" if self.current is not None and path == self.current else path.name

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.packages[int(event.option.id)])
