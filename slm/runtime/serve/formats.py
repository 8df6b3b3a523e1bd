"""The response bodies of the two generation endpoints, as plain dicts.

Chat and legacy completions differ only in names (`message`/`delta` vs `text`), so each is one small
class with the same three methods; the request handler does not know which it is writing.
Streamed chunks are server-sent events: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from slm.runtime.events import GenerationEvent


def usage(event: GenerationEvent) -> dict:
    """The engine's own counts (the completion count includes a sampled end-of-sequence token)."""
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.generated_tokens,
            "total_tokens": event.prompt_tokens + event.generated_tokens}


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


@dataclass
class _Format:
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


@dataclass
class ChatFormat(_Format):
    def __post_init__(self) -> None:
        self.id = self.id or f"chatcmpl-{uuid.uuid4().hex}"

    def whole(self, *, text: str, finish_reason: str, last: GenerationEvent, tool_calls: list[dict] = ()) -> dict:
        message = {"role": "assistant", "content": text or None, "tool_calls": list(tool_calls)} if tool_calls else \
            {"role": "assistant", "content": text}
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
                "usage": usage(last)}

    def chunk(self, *, text: str | None, finish_reason: str | None, with_usage: bool,
              tool_call: tuple[int, dict] | None = None) -> dict:
        """text=None is the opening chunk that names the role; `tool_call` (index, call) is one whole call."""
        delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
        if tool_call is not None:
            delta = {"tool_calls": [{"index": tool_call[0], **tool_call[1]}]}
        out = {**self._head("chat.completion.chunk"),
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if with_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, last: GenerationEvent) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(last)}


@dataclass
class CompletionFormat(_Format):
    def __post_init__(self) -> None:
        self.id = self.id or f"cmpl-{uuid.uuid4().hex}"

    def whole(self, *, text: str, finish_reason: str, last: GenerationEvent, tool_calls: list[dict] = ()) -> dict:
        return {**self._head("text_completion"),
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
                "usage": usage(last)}

    def chunk(self, *, text: str | None, finish_reason: str | None, with_usage: bool,
              tool_call: tuple[int, dict] | None = None) -> dict | None:
        if text is None:        # the legacy stream has no opening chunk
            return None
        out = {**self._head("text_completion"),
               "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
        if with_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, last: GenerationEvent) -> dict:
        return {**self._head("text_completion"), "choices": [], "usage": usage(last)}
