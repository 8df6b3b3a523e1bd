"""CommonsenseQA (CoS-E v1.11), as released with "Distilling step-by-step".

Five-way multiple choice; the label is the text of the right choice. `test` is the official dev
split (the official test has no public labels). PaLM's completions end "So the answer is (c) text."
and the letter decides: it is mapped back to the choice text of this example.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from slm.distill.tasks.base import Example, Parsed, Rejection, Shot, check_split, cut, normalise, read_jsonl

LETTERS = "abcde"
RECORDED = {"train": [f"train_CoT_{i}.json" for i in range(10)], "test": ["test_CoT_0.json", "test_CoT_1.json"]}
_LETTER = re.compile(r"^\(([a-e])\)\s*(.*)$", re.DOTALL)
_BARE_LETTER = re.compile(r"^\(?([a-eA-E])[).:]?(?:\s+(.*))?$", re.DOTALL)  # 'c', 'C)', 'c. pond'


EXEMPLARS = (
    ("What do people use to absorb extra ink from a fountain pen?",
     ("shirt pocket", "calligrapher's hand", "inkwell", "desk drawer", "blotter"),
     "The answer must be an item that can absorb ink. Of the above choices, only blotters are used to "
     "absorb ink.", 4),
    ("What home entertainment equipment requires cable?",
     ("radio shack", "substation", "television", "cabinet", "desk"),
     "The answer must require cable. Of the above choices, only television requires cable.", 2),
    ("Where do you put your grapes just before checking out?",
     ("mouth", "grocery cart", "super market", "fruit basket", "fruit market"),
     "The answer should be the place where grocery items are placed before checking out. Of the above "
     "choices, grocery cart makes the most sense for holding grocery items.", 1),
)


def _question(question: str, choices: tuple[str, ...]) -> str:
    options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question}\nAnswer Choices:\n{options}"


@dataclass(frozen=True)
class CqaTask:
    data_dir: Path
    name: str = "cqa"
    prompt_version: str = "cqa-cot-v1"
    stop: tuple[str, ...] = ("\n\nQ:",)

    def load(self, split: str) -> list[Example]:
        check_split(self.name, split)
        rows = read_jsonl(self.data_dir / f"cqa_{split}.json")
        return [Example(id=r["id"], input=_question(r["question"], tuple(r["choices"])), label=r["answer"],
                        rationale=r.get("abstractive_explanation") or None, choices=tuple(r["choices"]))
                for r in rows]

    def recorded_outputs(self, split: str) -> list[Path]:
        check_split(self.name, split)
        return [self.data_dir / "llm" / n for n in RECORDED[split]]

    def teacher_prompt(self, example: Example) -> str:
        shots = "".join(f"Q: {_question(q, c)}\nA: {r} So the answer is ({LETTERS[k]}) {c[k]}.\n\n"
                        for q, c, r, k in EXEMPLARS)
        return f"{shots}Q: {example.input}\nA:"

    def parse_teacher(self, text: str, example: Example) -> Parsed | Rejection:
        text = cut(text, self.stop).strip()
        marker = "So the answer is"
        at = text.rfind(marker)
        if at == -1:
            return Rejection("unparseable", "no 'So the answer is'")
        rationale = text[:at].strip()
        answer = self._choice(text[at + len(marker):], example)
        if not rationale:
            return Rejection("unparseable", "empty rationale")
        if isinstance(answer, Rejection):
            return answer
        return Parsed(rationale=rationale, answer=answer)

    def question(self, example: Example) -> str:
        return example.input

    def shots(self, example: Example) -> tuple[Shot, ...]:
        return tuple(Shot(_question(q, c), r, f"({LETTERS[k]}) {c[k]}") for q, c, r, k in EXEMPLARS)

    def answer_spec(self, example: Example) -> str:
        return "one of the answer choices, its letter and its text, e.g. (c) television"

    def answer_of(self, text: str, example: Example) -> str | Rejection:
        """'(c) pond', 'c', 'C) pond', 'Pond', or an answer naming exactly one choice's text."""
        choice = self._choice(text, example)
        if not isinstance(choice, Rejection):
            return choice
        bare = _BARE_LETTER.match(text.strip())
        if bare and (bare.group(2) is None or normalise(bare.group(2)) in map(normalise, example.choices)):
            return example.choices[LETTERS.index(bare.group(1).lower())]
        named = [c for c in example.choices if f" {normalise(c)} " in f" {normalise(text)} "]
        if len(named) == 1:
            return named[0]
        return choice

    def parse_prediction(self, text: str, example: Example) -> str | Rejection:
        return self._choice(text.split("\n")[0], example)

    def is_correct(self, answer: str, example: Example) -> bool:
        return normalise(answer) == normalise(example.label)

    def _choice(self, text: str, example: Example) -> str | Rejection:
        """'(c) wooded area.' or 'wooded area' → the text of one of this example's choices."""
        text = text.strip().rstrip(".").strip()
        m = _LETTER.match(text)
        if m:
            return example.choices[LETTERS.index(m.group(1))]
        for choice in example.choices:
            if normalise(choice) == normalise(text):
                return choice
        return Rejection("unparseable", f"not one of the choices: {text[:40]!r}")
