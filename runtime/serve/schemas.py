"""The request bodies of the OpenAI API that this server accepts, as pydantic models.

Types are strict (`"5"` is not an integer) and unknown fields are ignored, as clients send fields
of newer API versions. Fields that would change the answer in ways this server cannot honour
(`n > 1`, `logprobs`, `tools`, penalties) are rejected by `unsupported()` rather than dropped.
`top_k`, `min_p` and `repetition_penalty` are the extensions llama.cpp and vLLM accept.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_STOPS = 16
StopString = Annotated[str, StringConstraints(min_length=1)]


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_template_message(self) -> dict:
        """The dict the chat template takes: `developer` is OpenAI's new name for `system`."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both endpoints share."""
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None            # OpenAI requires it; curl users may leave it out
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = 1.0            # OpenAI's default; 0 is greedy
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for the first field set to something this server does not do, else None."""
        if self.n != 1:
            return "n", f"n={self.n} is not supported; this server returns one choice (n=1)"
        if self.logprobs not in (None, False, 0):
            return "logprobs", f"logprobs={self.logprobs!r} is not supported; leave it out"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                return name, (f"{name}={getattr(self, name)!r} is not supported; use repetition_penalty "
                              f"(> 1 discourages repeats)")
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported; leave it out"
        return None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(default=None, ge=1)   # OpenAI's newer name for max_tokens
    tools: list[dict] | None = None
    response_format: dict | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.tools:
            return "tools", "tools (function calling) are not supported by this server"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", (f"response_format type {self.response_format.get('type')!r} is not "
                                       f"supported; accepted: text")
        return super().unsupported()

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: int | None = Field(default=16, ge=1)    # the legacy endpoint's default is 16
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo=true is not supported; leave it out"
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported; leave it out"
        if self.best_of not in (None, 1):
            return "best_of", f"best_of={self.best_of} is not supported; leave it out"
        return super().unsupported()

    def token_limit(self) -> int | None:
        return self.max_tokens
