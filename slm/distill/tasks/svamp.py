"""SVAMP arithmetic word problems, as split and released with "Distilling step-by-step".

Label: an expression such as `( 84.0 / 2.0 )`. A student's answer is right when its expression
evaluates (safely, `slm.distill.arith`) to the gold value. PaLM's completions end with
"The answer is (84 / 2)." and then ramble into the next few-shot "Q:".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from slm.distill import arith
from slm.distill.tasks.base import Example, Parsed, Rejection, Shot, check_split, cut, read_jsonl

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FRAC = re.compile(r"\\d?frac\{([^{}]+)\}\{([^{}]+)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_OPERATORS = (("\\times", "*"), ("\\cdot", "*"), ("×", "*"), ("\\div", "/"), ("÷", "/"), ("−", "-"))

BUNDLED = Path(__file__).resolve().parent.parent / "data" / "svamp"

# Few-shot chain-of-thought exemplars for a live teacher, in the format of the recorded PaLM outputs.
EXEMPLARS = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
     "are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. "
     "So there must have been 21 - 15 = 6.", "(21 - 15)"),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left "
     "in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39.", "((32 + 42) - 35)"),
    ("A baker made 48 cakes and put them into boxes of 6 cakes each. How many boxes did he fill?",
     "There are 48 cakes and each box holds 6 cakes. So he filled 48 / 6 = 8 boxes.", "(48 / 6)"),
    ("Olivia bought 5 bagels for 3 dollars each. How much did she spend?",
     "She bought 5 bagels. Each bagel costs 3 dollars. So she spent 5 * 3 = 15 dollars.", "(5 * 3)"),
)


@dataclass(frozen=True)
class SvampTask:
    data_dir: Path = BUNDLED
    name: str = "svamp"
    prompt_version: str = "svamp-cot-v1"
    stop: tuple[str, ...] = ("\n\nQ:",)

    def load(self, split: str) -> list[Example]:
        check_split(self.name, split)
        rows = read_jsonl(self.data_dir / f"svamp_{split}.json")
        return [Example(id=f"{split}-{i}", input=r["input"], label=r["label"]) for i, r in enumerate(rows)]

    def recorded_outputs(self, split: str) -> list[Path]:
        check_split(self.name, split)
        names = ["train_CoT_0.json", "train_CoT_1.json"] if split == "train" else ["test_CoT_0.json"]
        return [self.data_dir / "llm" / n for n in names]

    def teacher_prompt(self, example: Example) -> str:
        shots = "".join(f"Q: {q}\nA: {r} The answer is {a}.\n\n" for q, r, a in EXEMPLARS)
        return f"{shots}Q: {' '.join(example.input.split())}\nA:"

    def parse_teacher(self, text: str, example: Example) -> Parsed | Rejection:
        text = cut(text, self.stop).strip()
        marker = "The answer is"
        at = text.rfind(marker)
        if at == -1:
            return Rejection("unparseable", "no 'The answer is'")
        rationale = text[:at].strip()
        answer = text[at + len(marker):].strip().rstrip(".").strip()
        if not rationale:
            return Rejection("unparseable", "empty rationale")
        if arith.try_evaluate(answer) is None:
            return Rejection("unparseable", f"answer is not arithmetic: {answer[:40]!r}")
        return Parsed(rationale=rationale, answer=answer)

    def question(self, example: Example) -> str:
        return " ".join(example.input.split())

    def shots(self, example: Example) -> tuple[Shot, ...]:
        return tuple(Shot(q, r, a) for q, r, a in EXEMPLARS)

    def answer_spec(self, example: Example) -> str:
        return ("an arithmetic expression over the numbers in the problem, written with + - * / and "
                "parentheses only, e.g. (21 - 15)")

    def answer_of(self, text: str, example: Example) -> str | Rejection:
        """An expression as written, else its TeX/unicode spelling, else the last side of an '=' that is one,
        else the last number in the text ('6 trees.')."""
        if arith.try_evaluate(text) is not None:
            return text
        plain = _FRAC.sub(r"(\1 / \2)", _THOUSANDS.sub("", text))
        for tex, op in _OPERATORS:
            plain = plain.replace(tex, op)
        for side in reversed(plain.split("=")):
            if arith.try_evaluate(side) is not None:
                return side.strip()
        numbers = _NUMBER.findall(plain)
        if numbers:
            return numbers[-1]
        return Rejection("unparseable", f"answer is not arithmetic: {text[:40]!r}")

    def parse_prediction(self, text: str, example: Example) -> str | Rejection:
        answer = text.strip().split("\n")[0].strip().rstrip(".").strip()
        if arith.try_evaluate(answer) is None:
            return Rejection("unparseable", f"not arithmetic: {answer[:40]!r}")
        return answer

    def is_correct(self, answer: str, example: Example) -> bool:
        return arith.same_value(arith.try_evaluate(answer), arith.try_evaluate(example.label))
