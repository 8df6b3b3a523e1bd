"""Render a Hugging Face chat template (Jinja) the way transformers' `apply_chat_template` does.

The environment matches transformers' `_compile_jinja_template`: a sandbox
(`ImmutableSandboxedEnvironment`, since templates ship inside downloaded models and are untrusted
code) with `trim_blocks`, `lstrip_blocks` and the `loopcontrols` extension, the globals
`raise_exception` and `strftime_now`, and a `tojson` filter that keeps non-ASCII text and takes
`indent`. The template is compiled once per source string and reused on every turn.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from slm.core.errors import SlmError

ROLES = ("system", "user", "assistant", "tool")
# Names the renderer sets itself; `extra` may not replace them.
RESERVED_NAMES = frozenset({"messages", "bos_token", "eos_token", "add_generation_prompt"})


class _TemplateRaised(jinja2.exceptions.TemplateError):
    """Raised by the template's own `raise_exception(message)`."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters and ignores these options; transformers' does not.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def validate_messages(messages: list[dict]) -> None:
    """Raise ValueError naming the first bad message and what is accepted."""
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    accepted = f"a dict with 'role' in {', '.join(ROLES)} and 'content' a str"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}]={message!r} is not a dict; each message must be {accepted}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}] has role={role!r}; each message must be {accepted}")
        if not isinstance(message.get("content"), str):
            raise ValueError(
                f"messages[{i}] (role {role!r}) has content={message.get('content')!r}; "
                f"each message must be {accepted}"
            )


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template. Compile once, render every turn."""

    source: str
    _compiled: jinja2.Template = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = _environment().from_string(self.source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise SlmError(f"the chat template does not parse (line {exc.lineno}): {exc.message}") from exc
        object.__setattr__(self, "_compiled", compiled)

    def render(
        self,
        messages: list[dict],
        *,
        bos_token: str,
        eos_token: str,
        add_generation_prompt: bool = True,
        extra: dict | None = None,
    ) -> str:
        """The prompt text for `messages`; `extra` adds template variables (e.g. `tools`)."""
        validate_messages(messages)
        clash = RESERVED_NAMES & set(extra or {})
        if clash:
            raise ValueError(f"extra may not set {sorted(clash)}; pass them as arguments of render")
        context = {
            "tools": None,      # transformers always defines these two, so templates test
            "documents": None,  # `{% if tools %}`; `extra` may set them
            **(extra or {}),
            "messages": [dict(m) for m in messages],  # a copy: templates cannot touch the caller's
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return self._compiled.render(**context)
        except _TemplateRaised as exc:
            raise SlmError(f"the chat template rejected the conversation: {exc.message}") from exc
        except Exception as exc:  # template code is data from the model package, not slm's code
            raise SlmError(f"the chat template failed to render: {type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=8)
def compile_template(source: str) -> ChatTemplate:
    """The compiled template for `source`, cached: the same template is rendered every turn."""
    return ChatTemplate(source)


def render_chat(
    template: str,
    messages: list[dict],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    extra: dict | None = None,
) -> str:
    """Render `template` (a Jinja source string) for `messages`, compiling it at most once."""
    return compile_template(template).render(
        messages,
        bos_token=bos_token,
        eos_token=eos_token,
        add_generation_prompt=add_generation_prompt,
        extra=extra,
    )
