"""A user's own task as JSON lines: `{"input": ..., "label": ..., "rationale": optional, "id": optional}`.

`<data_dir>/train.jsonl` and `<data_dir>/test.jsonl`. Labels are compared as text (case and spacing
ignored). A live teacher is prompted with up to three train rows that carry a rationale, in the form
"Q: <input>\\nA: <rationale> So the answer is <label>."; rows' own rationales can serve directly
through the `human` teacher.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slm.errors import SlmError

from distill.tasks.base import Example, Parsed, Rejection, check_split, cut, normalise, read_jsonl

SHOTS = 3


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

    def parse_prediction(self, text: str, example: Example) -> str | Rejection:
        answer = text.split("\n")[0].strip()
        return answer if answer else Rejection("unparseable", "empty answer")

    def is_correct(self, answer: str, example: Example) -> bool:
        return normalise(answer) == normalise(example.label)
