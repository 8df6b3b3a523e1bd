"""Recorded teachers: answers written down before the run.

`RecordedTeacher` replays completions index-aligned with a split, such as the PaLM-540B few-shot
chain-of-thought outputs released with "Distilling step-by-step" (Hsieh et al., 2023).
`HumanTeacher` uses the rationale each example already carries (e-SNLI explanations, CoS-E, or the
`rationale` field of a JSONL task) with the gold label as the answer.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from slm.core.errors import SlmError

from slm.distill.tasks.base import Example, Parsed, Rejection, Task, read_completions
from slm.distill.teachers.base import Reply, TeacherFailure


@dataclass(frozen=True)
class RecordedTeacher:
    completions: dict[str, str] = field(repr=False)  # example id -> raw completion
    id: str = "recorded:palm-540b"

    @classmethod
    def for_split(cls, task: Task, split: str) -> "RecordedTeacher":
        """The paper's PaLM outputs for `split` of `task`, matched to its examples by position."""
        examples = task.load(split)
        completions = read_completions(task.recorded_outputs(split))
        if len(completions) != len(examples):
            raise SlmError(f"recorded outputs for {task.name}/{split} have {len(completions)} entries "
                           f"but the split has {len(examples)} rows; they must be index-aligned")
        return cls(completions={e.id: c for e, c in zip(examples, completions)})

    def prompt_version(self, task: Task) -> str:
        return "dss-palm-release"  # the paper's own prompts, fixed when the outputs were recorded

    def parse(self, task: Task, text: str, example: Example) -> Parsed | Rejection:
        return task.parse_teacher(text, example)  # the paper's format, read strictly (the counts in DISTILL.md)

    def answer(self, task: Task, examples: Sequence[Example]) -> Iterator[tuple[Example, Reply]]:
        for example in examples:
            text = self.completions.get(example.id)
            yield example, text if text is not None else TeacherFailure(f"no recorded output for {example.id!r}")


@dataclass(frozen=True)
class HumanTeacher:
    id: str = "human"

    def prompt_version(self, task: Task) -> str:
        return "dataset"

    def parse(self, task: Task, text: str, example: Example) -> Parsed | Rejection:
        return Rejection("unparseable", "the human teacher gives no text replies")

    def answer(self, task: Task, examples: Sequence[Example]) -> Iterator[tuple[Example, Reply]]:
        for example in examples:
            yield example, Parsed(rationale=example.rationale or "", answer=example.label)
