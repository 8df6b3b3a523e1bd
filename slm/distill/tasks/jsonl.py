"""A user's own task as JSON lines: `{"input": ..., "label": ..., "rationale": optional, "id": optional}`.

`<data_dir>/train.jsonl` and `<data_dir>/test.jsonl`. Labels are compared as text (case and spacing
ignored). A live teacher is prompted with up to three train rows that carry a rationale, in the form
"Q: <input>\\nA: <rationale> So the answer is <label>."; rows' own rationales can serve directly
through the `human` teacher.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from slm.core.errors import SlmError

from slm.distill.tasks.base import Example, Parsed, Rejection, Shot, check_split, cut, normalise, read_jsonl

SHOTS = 3
CLOSED_SET = 12     # a train split with at most this many distinct labels, each seen twice or more, is a classification
INSTRUCTION = "instruction.txt"  # optional: one paragraph telling a live teacher what the task is


@dataclass(frozen=True)
class JsonlTask:
    data_dir: Path
    name: str = "jsonl"
    prompt_version: str = "jsonl-cot-v1"
    stop: tuple[str, ...] = ("\n\nQ:",)

    def load(self, split: str) -> list[Example]:
        check_split(self.name, split)
        path = self.data_dir / f"{split}.jsonl"
        examples = []
        for i, row in enumerate(read_jsonl(path)):
            if not isinstance(row.get("input"), str) or not isinstance(row.get("label"), str) or not row["label"].strip():
                raise SlmError(f"{path}: row {i + 1} needs string fields 'input' and a non-empty 'label'")
            examples.append(Example(id=str(row.get("id", f"{split}-{i}")), input=row["input"], label=row["label"],
                                    rationale=row.get("rationale") or None))
        return examples

    def recorded_outputs(self, split: str) -> list[Path]:
        raise SlmError("the jsonl task has no recorded teacher outputs; accepted teachers: human, local, openai")

    def teacher_prompt(self, example: Example) -> str:
        shots = [e for e in self.load("train") if e.rationale and e.id != example.id][:SHOTS]
        text = "".join(f"Q: {e.input}\nA: {e.rationale} So the answer is {e.label}.\n\n" for e in shots)
        return f"{text}Q: {example.input}\nA:"

    def parse_teacher(self, text: str, example: Example) -> Parsed | Rejection:
        text = cut(text, self.stop).strip()
        marker = "So the answer is"
        at = text.rfind(marker)
        if at == -1:
            return Rejection("unparseable", "no 'So the answer is'")
        rationale, answer = text[:at].strip(), text[at + len(marker):].strip().rstrip(".").strip()
        if not rationale or not answer:
            return Rejection("unparseable", "empty rationale or answer")
        return Parsed(rationale=rationale, answer=answer)

    @cached_property
    def _train(self) -> list[Example]:
        return self.load("train")

    @cached_property
    def label_set(self) -> tuple[str, ...]:
        """The labels, when the train split is a classification (few distinct labels, each repeated); else ()."""
        counts: dict[str, int] = {}
        for e in self._train:
            counts[e.label] = counts.get(e.label, 0) + 1
        closed = len(counts) <= CLOSED_SET and min(counts.values(), default=0) >= 2
        return tuple(sorted(counts)) if closed else ()

    def question(self, example: Example) -> str:
        return example.input

    def shots(self, example: Example) -> tuple[Shot, ...]:
        return tuple(Shot(e.input, e.rationale, e.label) for e in self._train
                     if e.rationale and e.id != example.id)[:SHOTS]

    def answer_spec(self, example: Example) -> str:
        path = self.data_dir / INSTRUCTION
        told = path.read_text(encoding="utf-8").strip() + " " if path.is_file() else ""
        if self.label_set:
            return f"{told}exactly one of: {', '.join(self.label_set)}"
        return f"{told}the final answer only, short, in the form of the examples' answers"

    def answer_of(self, text: str, example: Example) -> str | Rejection:
        if not text.strip():
            return Rejection("unparseable", "empty answer")
        if not self.label_set:
            return text.strip()
        for label in self.label_set:
            if normalise(label) == normalise(text):
                return label
        return Rejection("unparseable", f"not one of the labels: {text[:40]!r}")

    def parse_prediction(self, text: str, example: Example) -> str | Rejection:
        answer = text.split("\n")[0].strip()
        return answer if answer else Rejection("unparseable", "empty answer")

    def is_correct(self, answer: str, example: Example) -> bool:
        return normalise(answer) == normalise(example.label)
