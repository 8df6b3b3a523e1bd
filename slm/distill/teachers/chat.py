"""The conversation an instruct (chat) teacher sees: a system message giving the format, the task's
worked examples as earlier turns, then the question.

    system:    how to answer, and the reply format {"rationale": ..., "answer": ...}
    user:      <shot question>      assistant: {"rationale": "<shot rationale>", "answer": "<shot answer>"}
    ...                                                                            (the task's few-shot examples)
    user:      <question>

The same messages go out with or without structured output (`RESPONSE_FORMAT`, a strict JSON Schema),
so a store written through a server without it can be resumed through one with it: the prompt, and
so `CHAT_PROMPT_VERSION`, are the same.
"""
from __future__ import annotations

import json

from slm.distill.tasks.base import Example, Task

CHAT_PROMPT_VERSION = "chat-json-v1"  # bump when SYSTEM or the turn layout changes

SYSTEM = (
    "You are a careful teacher who explains how to solve a task. For the question you are given, think step "
    "by step and write your reasoning as a short rationale of a few sentences, then give the final answer. "
    "The answer must be {answer_spec}. "
    'Reply with a single JSON object and nothing else: {{"rationale": "<your step-by-step reasoning>", '
    '"answer": "<the final answer>"}}.'
)

RATIONALE_SCHEMA = {
    "type": "object",
    "properties": {"rationale": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["rationale", "answer"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema",
                   "json_schema": {"name": "rationale", "schema": RATIONALE_SCHEMA, "strict": True}}


def reply_json(rationale: str, answer: str) -> str:
    return json.dumps({"rationale": rationale, "answer": answer}, ensure_ascii=False)


def chat_messages(task: Task, example: Example) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM.format(answer_spec=task.answer_spec(example))}]
    for shot in task.shots(example):
        messages += [{"role": "user", "content": shot.question},
                     {"role": "assistant", "content": reply_json(shot.rationale, shot.answer)}]
    return messages + [{"role": "user", "content": task.question(example)}]
