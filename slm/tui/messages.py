"""What happened, as Textual messages: dataclasses named as facts, posted by a widget or a worker.

`post_message` is thread-safe: the package loader (a thread worker) posts what became of the package.
Tokens do not travel as messages: the generation worker hands each one to the UI with call_from_thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class PromptSubmitted(Message):
    """The user pressed Enter in the prompt input."""
    text: str


@dataclass
class EngineLoaded(Message):
    """A package picked in the package picker now runs in a new engine."""
    engine: Any


@dataclass
class EngineFailed(Message):
    """A picked package did not load; `error` says why."""
    package: str
    error: str
