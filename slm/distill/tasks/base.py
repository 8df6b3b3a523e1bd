"""What every task adapter provides, and the record types that flow from the data to the store.

A task turns its released files into `Example`s, writes the few-shot chain-of-thought prompt a live
teacher sees, parses a teacher completion into `Parsed(rationale, answer)` or a `Rejection` with a
reason (never a blank label), and decides whether a student's answer matches the gold label.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from slm.core.errors import SlmError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Example:
    """One task input. `id` is stable across runs: the rationale store is keyed by it."""
    id: str
    input: str                      # the text the student reads (after its task prefix)
    label: str                      # the gold label, written as the student must write it
    rationale: str | None = None    # a human rationale when the data has one (e-SNLI, CoS-E, JSONL)
    choices: tuple[str, ...] = ()   # multiple-choice options (CommonsenseQA), in order (a), (b), ...


@dataclass(frozen=True)
class Parsed:
    """A teacher completion split into its rationale and its answer (normalised like a label)."""
    rationale: str
    answer: str
    format: str = ""    # how a live teacher's reply was read (`slm.distill.replies.FORMATS`); "" for fixed formats


@dataclass(frozen=True)
class Shot:
    """One worked example a live teacher is shown: the question as it reads it, a rationale, the answer."""
    question: str
    rationale: str
    answer: str


@dataclass(frozen=True)
class Rejection:
    """Why a completion or a prediction could not be used. `reason` is a short stable key."""
    reason: str
    detail: str = ""


class Task(Protocol):
    name: str
    prompt_version: str     # bump when `teacher_prompt` or its exemplars change
    stop: tuple[str, ...]   # where a live teacher's completion must end

    def load(self, split: str) -> list[Example]: ...

    def recorded_outputs(self, split: str) -> list[Path]:
        """The PaLM-540B completion files released with the paper for `split`, index-aligned."""
        ...

    def teacher_prompt(self, example: Example) -> str:
        """The raw few-shot prompt (completions endpoints, local models), in the recorded outputs' format."""
        ...

    def parse_teacher(self, text: str, example: Example) -> Parsed | Rejection:
        """A completion in the few-shot format itself (the recorded PaLM outputs)."""
        ...

    def question(self, example: Example) -> str:
        """The input as a chat teacher reads it."""
        ...

    def shots(self, example: Example) -> tuple[Shot, ...]:
        """Worked examples shown to a chat teacher before `example` (never `example` itself)."""
        ...

    def answer_spec(self, example: Example) -> str:
        """What the answer must be, in words, for the teacher's instructions."""
        ...

    def answer_of(self, text: str, example: Example) -> str | Rejection:
        """A teacher's answer text (already cut from its reply) in the label's form, or why not."""
        ...

    def parse_prediction(self, text: str, example: Example) -> str | Rejection:
        """The student's answer as a label string, or why it is unusable."""
        ...

    def is_correct(self, answer: str, example: Example) -> bool: ...


def check_split(task_name: str, split: str) -> None:
    if split not in SPLITS:
        raise SlmError(f"unknown split {split!r} for task {task_name!r}; accepted: {', '.join(SPLITS)}")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a malformed line is a user error naming the file and line."""
    if not path.is_file():
        raise SlmError(f"data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SlmError(f"{path}:{number}: not a JSON object ({e.msg})") from e
    return rows


def read_completions(paths: list[Path]) -> list[str]:
    """Concatenate JSON arrays of completion strings (the paper ships them in chunks)."""
    out: list[str] = []
    for path in paths:
        if not path.is_file():
            raise SlmError(f"recorded teacher file not found: {path}")
        out.extend(json.loads(path.read_text(encoding="utf-8")))
    return out


def cut(text: str, stops: tuple[str, ...]) -> str:
    """The completion up to the first stop marker (few-shot teachers ramble into the next item)."""
    end = len(text)
    for stop in stops:
        i = text.find(stop)
        if i != -1:
            end = min(end, i)
    return text[:end]


def normalise(text: str) -> str:
    """Case- and space-insensitive form used to compare class names and choice texts."""
    return " ".join(text.strip().strip(".").lower().split())
