"""A teacher run locally through transformers (an HF folder or a GGUF file, e.g. Gemma 3 270M),
prompted with the task's few-shot chain-of-thought exemplars and decoded greedily in batches."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slm.distill.replies import parse_reply
from slm.distill.student import load_causal_lm
from slm.distill.tasks.base import Example, Parsed, Rejection, Task, cut
from slm.distill.teachers.base import Reply


class LocalTeacher:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 max_new_tokens: int = 128, batch_size: int = 4) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.id = f"local:{name}"
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    @classmethod
    def from_source(cls, source: str | Path, *, max_new_tokens: int = 128, batch_size: int = 4) -> "LocalTeacher":
        model, tokenizer = load_causal_lm(source)
        return cls(model, tokenizer, name=Path(str(source)).name, max_new_tokens=max_new_tokens,
                   batch_size=batch_size)

    def prompt_version(self, task: Task) -> str:
        return task.prompt_version

    def parse(self, task: Task, text: str, example: Example) -> Parsed | Rejection:
        return parse_reply(task, text, example)

    @torch.no_grad()
    def answer(self, task: Task, examples: Sequence[Example]) -> Iterator[tuple[Example, Reply]]:
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only batching: pad on the left so every prompt ends at the same column
        for start in range(0, len(examples), self.batch_size):
            batch = examples[start:start + self.batch_size]
            enc = tok([task.teacher_prompt(e) for e in batch], return_tensors="pt", padding=True)
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for example, text in zip(batch, texts):
                yield example, cut(text, task.stop)
