"""e-SNLI natural-language inference, as released with "Distilling step-by-step".

Three classes (0 entailment, 1 neutral, 2 contradiction). The official train split is too big to be
shipped, so `train` reads the validation file (9,842 rows, with PaLM-540B rationales) and `test`
the test file. PaLM's completions read "<rationale>\\nAnswer: neutral" and then ramble into the
next few-shot "Premise:".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slm.distill.tasks.base import Example, Parsed, Rejection, Shot, check_split, cut, normalise, read_jsonl

LABELS = ("entailment", "neutral", "contradiction")
STEMS = {"entail": "entailment", "neutral": "neutral", "contradict": "contradiction"}  # 'entails', 'contradicts'
FILES = {"train": "esnli_valid.json", "test": "esnli_test.json"}
RECORDED = {"train": ["valid_CoT_0.json", "valid_CoT_1.json"], "test": ["test_CoT_0.json", "test_CoT_1.json"]}

EXEMPLARS = (
    ("A person on a horse jumps over a broken down airplane.", "A person is outdoors, on a horse.",
     "One jumping horse can be ridden only outdoors.", "entailment"),
    ("Children smiling and waving at camera.", "The kids are frowning.",
     "One cannot be smiling and frowning at the same time.", "contradiction"),
    ("A boy is jumping on skateboard in the middle of a red bridge.", "The boy is wearing safety equipment.",
     "Jumping on a skateboard does not imply wearing safety equipment.", "neutral"),
)


@dataclass(frozen=True)
class EsnliTask:
    data_dir: Path
    name: str = "esnli"
    prompt_version: str = "esnli-cot-v1"
    stop: tuple[str, ...] = ("\n\nPremise:",)

    def load(self, split: str) -> list[Example]:
        check_split(self.name, split)
        rows = read_jsonl(self.data_dir / FILES[split])
        return [Example(id=f"{split}-{i}", input=f"premise: {r['premise']}\nhypothesis: {r['hypothesis']}",
                        label=LABELS[r["label"]], rationale=r.get("explanation_1") or None)
                for i, r in enumerate(rows)]

    def recorded_outputs(self, split: str) -> list[Path]:
        check_split(self.name, split)
        return [self.data_dir / "llm" / n for n in RECORDED[split]]

    def teacher_prompt(self, example: Example) -> str:
        shots = "".join(f"Premise: {p}\nHypothesis: {h}\nReasonings: {r}\nAnswer: {a}\n\n"
                        for p, h, r, a in EXEMPLARS)
        premise, hypothesis = (line.split(": ", 1)[1] for line in example.input.split("\n", 1))
        return f"{shots}Premise: {premise}\nHypothesis: {hypothesis}\nReasonings:"

    def parse_teacher(self, text: str, example: Example) -> Parsed | Rejection:
        text = cut(text, self.stop).strip()
        at = text.rfind("Answer:")
        if at == -1:
            return Rejection("unparseable", "no 'Answer:'")
        rationale = text[:at].strip()
        answer = normalise(text[at + len("Answer:"):].split("\n")[0])
        if not rationale:
            return Rejection("unparseable", "empty rationale")
        if answer not in LABELS:
            return Rejection("unparseable", f"answer is not a class: {answer[:40]!r}")
        return Parsed(rationale=rationale, answer=answer)

    def question(self, example: Example) -> str:
        premise, hypothesis = (line.split(": ", 1)[1] for line in example.input.split("\n", 1))
        return f"Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?"

    def shots(self, example: Example) -> tuple[Shot, ...]:
        return tuple(Shot(f"Premise: {p}\nHypothesis: {h}\nDoes the premise entail the hypothesis?", r, a)
                     for p, h, r, a in EXEMPLARS)

    def answer_spec(self, example: Example) -> str:
        return "one word: entailment, neutral or contradiction"

    def answer_of(self, text: str, example: Example) -> str | Rejection:
        """The class named in the answer ('Entailment', 'the premise entails it'), when exactly one is."""
        found = {label for stem, label in STEMS.items() if stem in normalise(text)}
        if len(found) == 1:
            return found.pop()
        return Rejection("unparseable", f"answer is not a class: {text[:40]!r}")

    def parse_prediction(self, text: str, example: Example) -> str | Rejection:
        answer = normalise(text.split("\n")[0])
        if answer not in LABELS:
            return Rejection("unparseable", f"not a class: {answer[:40]!r}")
        return answer

    def is_correct(self, answer: str, example: Example) -> bool:
        return normalise(answer) == example.label
