"""The request bodies of the OpenAI API that this server accepts, as pydantic models.

Types are strict (`"5"` is not an integer) and unknown fields are ignored, as clients send fields
of newer API versions. Fields that would change the answer in ways this server cannot honour
(`n > 1`, `logprobs`, penalties) are rejected by `unsupported()` rather than dropped. `tools`,
`tool_choice` and `response_format` become a grammar (slm/runtime/serve/tools.py).
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


class FunctionCall(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    name: str
    arguments: str          # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None        # an assistant's earlier calls
    tool_call_id: str | None = None                 # a tool message: which call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_template_message(self) -> dict:
        """The dict the chat template takes: `developer` is OpenAI's new name for `system`."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class FunctionSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    parameters: dict | None = None      # a JSON Schema for the arguments object
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.type == "json_schema" and self.json_schema is None:
            return "response_format.json_schema", "response_format type 'json_schema' needs json_schema: {name, schema, strict}"
        return None


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
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None

    def unsupported(self) -> tuple[str, str] | None:
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) < len(names):
            return "tools", f"tools name the same function twice ({names}); give each function once"
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            return "tool_choice", (f"tool_choice names function {self.tool_choice.function.name!r}, which is not "
                                   f"in tools ({names or 'none given'})")
        if self.tool_choice in ("required",) and not names:
            return "tool_choice", "tool_choice='required' needs at least one function in tools"
        return (self.response_format and self.response_format.unsupported()) or super().unsupported()

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: int | None = Field(default=16, ge=1)    # the legacy endpoint's default is 16
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None   # not in OpenAI's legacy API; vLLM's extension (extra_body)

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo=true is not supported; leave it out"
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported; leave it out"
        if self.best_of not in (None, 1):
            return "best_of", f"best_of={self.best_of} is not supported; leave it out"
        return (self.response_format and self.response_format.unsupported()) or super().unsupported()

    def token_limit(self) -> int | None:
        return self.max_tokens
