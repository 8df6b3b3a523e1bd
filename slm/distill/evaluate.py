"""Stage 3: accuracy of a student's label task on a split, decoded greedily.

Entry points: `evaluate_model` (a model in memory) and `evaluate_checkpoint` (a checkpoint folder, or
an slm package exported from one: then the student answers through the runtime's Engine).
A prediction the task cannot parse counts as wrong and is counted separately as `unparseable`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slm.distill.multitask import PREDICT, prompt
from slm.distill.tasks.base import Example, Rejection, Task
from slm.core.package import MANIFEST


@dataclass(frozen=True)
class Prediction:
    id: str
    output: str         # the student's raw text
    answer: str | None  # parsed answer, None when unparseable
    correct: bool


@dataclass(frozen=True)
class EvalResult:
    task: str
    correct: int
    total: int
    unparseable: int
    predictions: tuple[Prediction, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def counts(self) -> dict:
        return {"accuracy": round(self.accuracy, 4), "correct": self.correct, "total": self.total,
                "unparseable": self.unparseable}

    def line(self) -> str:
        return (f"{self.task}: accuracy {self.accuracy:.2%} ({self.correct}/{self.total}), "
                f"unparseable {self.unparseable}")


def few_shot_prefix(shots: list[Example]) -> str:
    """Solved inputs in the label task's own format, `predict: <input>\\n<label>\\n\\n` each: the prompt an
    untrained student is scored with (it has never seen the format, so zero-shot it rarely answers at all)."""
    return "".join(f"{prompt(PREDICT, shot.input)}{shot.label}\n\n" for shot in shots)


def first_line(output: str) -> str:
    """A few-shot answer is its first line: the model goes on to invent the next `predict:` item."""
    return output.strip("\n").split("\n", 1)[0] if output.strip() else output


@torch.no_grad()
def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, inputs: list[str], *,
                     max_new_tokens: int, batch_size: int = 16, prefix: str = "") -> list[str]:
    """Greedy label-task outputs for `inputs`, prompt `<prefix>predict: <input>\\n`, cut at end of sequence."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outputs = []
    try:
        for start in range(0, len(inputs), batch_size):
            prompts = [prefix + prompt(PREDICT, text) for text in inputs[start:start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            outputs += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def generate_answers_engine(package: str | Path, inputs: list[str], *, max_new_tokens: int,
                            prefix: str = "") -> list[str]:
    """The same label-task outputs from an exported package, decoded greedily by `runtime.Engine`."""
    from slm.runtime import Engine

    engine = Engine(package)
    return ["".join(event.text for event in engine.generate(prefix + prompt(PREDICT, text), raw=True,
                                                           max_tokens=max_new_tokens))
            for text in inputs]


def score(task: Task, examples: list[Example], outputs: list[str]) -> EvalResult:
    predictions, unparseable = [], 0
    for example, output in zip(examples, outputs, strict=True):
        answer = task.parse_prediction(output, example)
        if isinstance(answer, Rejection):
            unparseable += 1
            predictions.append(Prediction(example.id, output, None, False))
        else:
            predictions.append(Prediction(example.id, output, answer, task.is_correct(answer, example)))
    return EvalResult(task=task.name, correct=sum(p.correct for p in predictions), total=len(predictions),
                      unparseable=unparseable, predictions=tuple(predictions))


def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, examples: list[Example],
                   *, max_new_tokens: int = 32, batch_size: int = 16) -> EvalResult:
    outputs = generate_answers(model, tokenizer, [e.input for e in examples], max_new_tokens=max_new_tokens,
                               batch_size=batch_size)
    return score(task, examples, outputs)


def evaluate_checkpoint(folder: str | Path, task: Task, split: str = "test", *, limit: int | None = None,
                        max_new_tokens: int = 32, batch_size: int = 16, few_shot: int = 0,
                        predictions_out: str | Path | None = None) -> EvalResult:
    """Accuracy on `split`; `few_shot` > 0 puts that many train inputs, solved, before each prompt (the first
    ones of the train split, the same for every input) and scores each output's first line."""
    examples = task.load(split)[:limit]
    inputs = [e.input for e in examples]
    prefix = few_shot_prefix(task.load("train")[:few_shot]) if few_shot else ""
    if (Path(folder) / MANIFEST).is_file():          # an slm package: through the runtime
        outputs = generate_answers_engine(folder, inputs, max_new_tokens=max_new_tokens, prefix=prefix)
    else:
        from slm.distill.student import load_causal_lm

        model, tokenizer = load_causal_lm(folder)
        outputs = generate_answers(model, tokenizer, inputs, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   prefix=prefix)
    result = score(task, examples, [first_line(o) for o in outputs] if few_shot else outputs)
    if predictions_out is not None:
        with Path(predictions_out).open("w", encoding="utf-8") as f:
            for p in result.predictions:
                f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    return result
