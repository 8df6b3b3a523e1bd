"""OpenAI `tools` and `response_format` as a prompt and a grammar, and the reply back as `tool_calls`.

    request ─► ToolPlan.of(body, template) ─► messages + tools for the chat template
                                           ─► a Constraint: the reply is text, or calls, or JSON
    reply text ─► ReplyReader: content deltas as they come; `<tool_call>` blocks held until closed
               ─► OpenAI tool_calls (finish_reason "tool_calls"), or at max_tokens the raw text ("length")

A call is written the way Qwen2.5 (and the Hermes models before it) write one:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A template that renders `tools` itself (Qwen2.5-Coder's) gets them as its `tools` variable and the
conversation as it expects it (`tool_calls` on assistant turns, `tool` messages). A template that
does not (SmolLM2's) gets the same instructions Qwen's template writes, as a system message, earlier
calls as that text, and tool results as a user turn in `<tool_response>` tags: the documented JSON
convention of docs/SERVE.md. Either way the grammar makes the call valid JSON naming a given
function with arguments valid under its `parameters` schema. Where the tags are tokens of their own
(Qwen's 151657 and 151658) the grammar asks for those tokens, as the model writes them.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from slm.runtime.constraint import JSON_OPTIONS, Constraint
from slm.runtime.serve.schemas import ChatCompletionRequest, ChatMessage, NamedToolChoice, ResponseFormat

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
TOOLS_PROMPT = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n"
                "</tools>\n\nFor each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
                "<args-json-object>}}\n</tool_call>")
ANY_JSON_OBJECT = {"type": "object"}
NOT_A_CALL = r"TEXT: /(?s:.*)/ & ~/(?s:<tool_call>.*)/"      # any text that does not open a call


def tag_grammar(tokenizer) -> tuple[str, str]:
    """The Lark for the opening and closing tags: the tokenizer's own token where the tag is one
    (llguidance reads every added token as special, so only `<[id]>` matches it), else the text."""
    added = {} if tokenizer is None else {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items()}   # None: a byte package
    return tuple(f"<[{added[tag]}]>" if tag in added else json.dumps(tag) for tag in ("<tool_call>", "</tool_call>"))


def renders_tools(template_source: str | None) -> bool:
    """Whether a chat template writes the `tools` variable itself (Qwen2.5's does, SmolLM2's does not)."""
    return bool(template_source) and "tools" in template_source


@dataclass(frozen=True)
class ToolPlan:
    """What one chat request becomes: the template's inputs, the grammar, and how to read the reply."""
    messages: list[dict]
    template_tools: list[dict] | None       # for the template's `tools` variable
    constraint: Constraint | None
    calls: bool                              # the reply may hold tool calls

    @classmethod
    def of(cls, body: ChatCompletionRequest, template_source: str | None,
           tags: tuple[str, str] = ('"<tool_call>"', '"</tool_call>"')) -> ToolPlan:
        """`tags`: tag_grammar(the package's tokenizer)."""
        native = renders_tools(template_source)
        tools = [t.model_dump(exclude_none=True) for t in body.tools or ()]
        choice = (body.tool_choice or "auto") if tools else "none"
        messages = [_message(m, native) for m in body.messages]
        if tools and not native:
            messages = _with_tools_prompt(messages, tools)
        reply = reply_schema(body.response_format)
        if choice == "none":    # the tools stay in the prompt (as OpenAI keeps them); the reply may not call
            constraint = Constraint.json_schema(reply) if reply is not None else \
                Constraint.lark("start: TEXT\n" + NOT_A_CALL) if tools else None
            return cls(messages, tools if native and tools else None, constraint, False)
        offered = [t for t in tools if not isinstance(choice, NamedToolChoice) or t["function"]["name"] == choice.function.name]
        grammar = _calls_grammar(offered, parallel=body.parallel_tool_calls and not isinstance(choice, NamedToolChoice),
                                 text=choice == "auto", reply=reply, tags=tags)
        return cls(messages, tools if native else None, Constraint.lark(grammar), True)


def reply_schema(rf: ResponseFormat | None) -> dict | bool | None:
    """The JSON Schema a `response_format` asks for (None: free text)."""
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return ANY_JSON_OBJECT
    return rf.json_schema.schema_ if rf.json_schema.schema_ is not None else {}


def _message(m: ChatMessage, native: bool) -> dict:
    """One OpenAI message as the template takes it."""
    out = m.as_template_message()
    if m.role == "assistant" and m.tool_calls:
        calls = [{"name": c.function.name, "arguments": _arguments(c.function.arguments)} for c in m.tool_calls]
        if native:      # templates take arguments as a mapping (transformers' convention)
            out["tool_calls"] = [{"type": "function", "function": c} for c in calls]
        else:
            out["content"] = "\n".join([out["content"]] * bool(out["content"]) + [_call_text(c) for c in calls])
    if m.role == "tool" and not native:
        out = {"role": "user", "content": f"<tool_response>\n{out['content']}\n</tool_response>"}
    return out


def _arguments(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _call_text(call: dict) -> str:
    return OPEN + json.dumps(call, ensure_ascii=False) + CLOSE


def _with_tools_prompt(messages: list[dict], tools: list[dict]) -> list[dict]:
    prompt = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + prompt}] + messages[1:]
    return [{"role": "system", "content": prompt}] + messages


def _calls_grammar(tools: list[dict], *, parallel: bool, text: bool, reply: dict | bool | None,
                   tags: tuple[str, str]) -> str:
    """Lark for the reply: one call (or several, one per line), or, with tool_choice auto, free text
    (or the response_format's JSON) instead."""
    bodies = [_call_schema(t["function"], f"#/anyOf/{i}" if len(tools) > 1 else "#") for i, t in enumerate(tools)]
    call_schema = {"anyOf": bodies, "x-guidance": JSON_OPTIONS} if len(bodies) > 1 else {**bodies[0], "x-guidance": JSON_OPTIONS}
    lines = ["start: " + ("reply | calls" if text else "calls"),
             "calls: call" + (' ("\\n" call)*' if parallel else "") + ' "\\n"?',    # Qwen ends a call with a newline
             f'call: {tags[0]} "\\n" body "\\n" {tags[1]}',
             f"body: %json {json.dumps(call_schema)}"]
    if text and reply is not None:
        lines.append(f"reply: %json {json.dumps(_with_options(reply))}")
    elif text:
        lines += ["reply: TEXT", NOT_A_CALL]
    return "\n".join(lines) + "\n"


def _with_options(schema: dict | bool) -> dict | bool:
    if isinstance(schema, bool):
        return schema
    own = schema.get("x-guidance", {})
    return {**schema, "x-guidance": {**JSON_OPTIONS, **own} if isinstance(own, dict) else own}


def _call_schema(function: dict, at: str) -> dict:
    """{"name": <this function>, "arguments": <its parameters>}, the call object found at pointer `at`."""
    parameters = function.get("parameters") or ANY_JSON_OBJECT
    # the parameters move to <at>/properties/arguments: their local references move with them
    return {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
            "properties": {"name": {"const": function["name"]},
                           "arguments": _rebase(parameters, at + "/properties/arguments")}}


def _rebase(schema: object, base: str) -> object:
    if isinstance(schema, dict):
        return {k: (base + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#") else _rebase(v, base))
                for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v, base) for v in schema]
    return schema


class ReplyReader:
    """Reads a reply as it streams: text goes out as content at once, except what may be (or is) a
    tool call, which is held until its closing tag, so a call is only ever shown whole."""

    def __init__(self, calls: bool):
        self.calls = calls
        self.held = ""          # text not yet shown: a possible call opening, or a call in progress
        self.shown = False      # content went out: the reply is text
        self.tool_calls: list[dict] = []

    def feed(self, text: str) -> str:
        """The content to show now."""
        if not self.calls or self.shown:
            return text
        self.held += text
        if OPEN.startswith(self.held) or self.held.startswith(OPEN):
            return ""
        out, self.held, self.shown = self.held, "", True
        return out

    def finish(self, finish_reason: str) -> tuple[str, list[dict], str]:
        """(content still to show, tool calls, finish reason) at the end of the reply."""
        held, self.held = self.held, ""
        if not held.startswith(OPEN):
            return held, [], finish_reason
        calls = parse_calls(held) if finish_reason == "stop" else None
        if calls is None:       # cut short (or not a whole call): the text as it is, never a half call
            return held, [], finish_reason
        self.tool_calls = calls
        return "", calls, "tool_calls"


def parse_calls(text: str) -> list[dict] | None:
    """OpenAI tool_calls from `<tool_call>` blocks, or None when the text is not whole blocks."""
    calls = []
    for block in text.split(CLOSE):
        block = block.strip("\n")
        if not block:
            continue
        if not block.startswith(OPEN.strip("\n")):
            return None
        try:
            call = json.loads(block[len(OPEN.strip("\n")):])
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"],
                                   "arguments": json.dumps(call.get("arguments", {}), ensure_ascii=False)}})
    return calls or None
