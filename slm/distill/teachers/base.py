"""The one small interface every teacher implements.

`answer(task, examples)` yields `(example, reply)` in whatever order replies arrive. A reply is the
teacher's raw completion (`str`, parsed by the task), an already separated `Parsed` (human
rationales), or a `TeacherFailure` for one example (a timeout after all retries): failures are
counted and not stored, so the next run asks again. A failure that dooms every request (bad key,
unknown model) raises `SlmError` at once.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

from slm.distill.tasks.base import Example, Parsed, Rejection, Task


@dataclass(frozen=True)
class TeacherFailure:
    detail: str


Reply = Union[str, Parsed, TeacherFailure]


class Teacher(Protocol):
    id: str

    def prompt_version(self, task: Task) -> str:
        """Version of the prompts this teacher shows for `task` (stored with every record)."""
        ...

    def answer(self, task: Task, examples: Sequence[Example]) -> Iterator[tuple[Example, Reply]]: ...

    def parse(self, task: Task, text: str, example: Example) -> Parsed | Rejection:
        """Read one of this teacher's text replies (a fixed few-shot format, or whatever a chat model wrote)."""
        ...
