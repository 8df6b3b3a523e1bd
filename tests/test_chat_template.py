"""Chat templates: our renderer against transformers' `apply_chat_template`, plus its errors."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from slm.runtime.chat_template import ChatTemplate, compile_template, render_chat, validate_messages
from slm.core.errors import SlmError

REPO = Path(__file__).resolve().parents[1]

CONVERSATIONS = {
    "user only": [{"role": "user", "content": "What is 2+2?"}],
    "with system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
    ],
    "multi-turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Say 東京 and 🦀.\nThen stop."},
    ],
    "system multi-turn": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Good morning"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Good night"},
    ],
}

# Exercises what SmolLM2's template does not: tools through tojson (with and without indent),
# loop controls, whitespace control, bos/eos tokens and a template-level error.
TOOLS_TEMPLATE = """{{- bos_token }}
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You can call tools.' }}{%- endif %}
{{- '\\n<tools>' }}
{%- for tool in tools %}
{{- '\\n' }}{{- tool | tojson }}
{%- endfor %}
{{- '\\n</tools>\\n' }}{{- tools[0] | tojson(indent=2) }}{{- '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
  {%- if message.role == 'system' and tools %}{% continue %}{% endif %}
  {%- if message.content == 'STOP' %}{% break %}{% endif %}
  {%- if message.role not in ['system', 'user', 'assistant', 'tool'] %}{{ raise_exception('bad role') }}{% endif %}
  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- else %}{{- eos_token }}{%- endif %}"""

# Block tags on their own lines, no `-` modifiers: only trim_blocks and lstrip_blocks keep the
# output free of stray newlines and indentation.
WHITESPACE_TEMPLATE = """{% for message in messages %}
    {% if message.role == 'user' %}
User: {{ message.content }}
    {% else %}
{{ message.role | capitalize }}: {{ message.content }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
Assistant:
{% endif %}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather in a city, e.g. 東京 <Tokyo> & \"Zürich\"",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "time", "description": "Now", "parameters": {}}},
]


@pytest.fixture(scope="session")
def hf_tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer          # tests/conftest.py: the real SmolLM2 tokenizer from its GGUF


def ours(tok, messages, template=None, *, add_generation_prompt=True, extra=None) -> str:
    return render_chat(
        template or tok.chat_template,
        messages,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
        add_generation_prompt=add_generation_prompt,
        extra=extra,
    )


# --- parity with transformers ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_smollm2_template_matches_transformers(hf_tokenizer, name):
    messages = CONVERSATIONS[name]
    expected = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours(hf_tokenizer, messages) == expected


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_generation_prompt_flag_matches_transformers(hf_tokenizer, add_generation_prompt):
    messages = CONVERSATIONS["multi-turn"]
    expected = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours(hf_tokenizer, messages, add_generation_prompt=add_generation_prompt) == expected
    assert expected.endswith("<|im_start|>assistant\n") is add_generation_prompt


def test_smollm2_template_adds_its_default_system_prompt(hf_tokenizer):
    text = ours(hf_tokenizer, CONVERSATIONS["user only"])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "You are terse." in ours(hf_tokenizer, CONVERSATIONS["with system"])
    assert "SmolLM" not in ours(hf_tokenizer, CONVERSATIONS["with system"])


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("with_tools", [True, False])
def test_tools_template_matches_transformers(hf_tokenizer, name, with_tools):
    messages = CONVERSATIONS[name]
    tools = TOOLS if with_tools else None
    expected = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False, chat_template=TOOLS_TEMPLATE, tools=tools
    )
    got = ours(hf_tokenizer, messages, TOOLS_TEMPLATE, add_generation_prompt=False, extra={"tools": tools})
    assert got == expected
    if with_tools:
        assert 'e.g. 東京 <Tokyo> & \\"Zürich\\""' in got  # tojson: no \\u escapes, no HTML escapes
        assert '\n  "type": "function",' in got          # tojson(indent=2)


def test_loop_controls_match_transformers(hf_tokenizer):
    stop = {"role": "user", "content": "STOP"}
    messages = CONVERSATIONS["multi-turn"][:1] + [stop] + CONVERSATIONS["with system"]
    expected = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=TOOLS_TEMPLATE
    )
    got = ours(hf_tokenizer, messages, TOOLS_TEMPLATE)
    assert got == expected
    assert "Name a prime" not in got  # {% break %} at STOP


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_whitespace_control_matches_transformers(hf_tokenizer, name):
    messages = CONVERSATIONS[name]
    expected = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=WHITESPACE_TEMPLATE
    )
    assert ours(hf_tokenizer, messages, WHITESPACE_TEMPLATE) == expected
    assert "    " not in expected  # lstrip_blocks removed the indentation before block tags


# --- globals, filters, caching --------------------------------------------------------------------

def test_strftime_now_is_the_current_date():
    template = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}")
    before = datetime.now().strftime("%Y-%m-%d")
    got = template.render([], bos_token="", eos_token="")
    assert got in {before, datetime.now().strftime("%Y-%m-%d")}


def test_extra_variables_reach_the_template():
    template = ChatTemplate("{% if enable_thinking %}think{% else %}plain{% endif %}:{{ tools }}")
    assert template.render([], bos_token="", eos_token="", extra={"enable_thinking": True}) == "think:None"
    assert template.render([], bos_token="", eos_token="", extra={"tools": [1]}) == "plain:[1]"


def test_extra_may_not_replace_what_render_sets():
    template = ChatTemplate("{{ messages }}")
    with pytest.raises(ValueError, match=r"extra may not set \['bos_token', 'messages'\]"):
        template.render([], bos_token="", eos_token="", extra={"messages": [], "bos_token": "x"})


def test_a_template_is_compiled_once():
    source = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert compile_template(source) is compile_template(source)
    assert render_chat(source, [{"role": "user", "content": "x"}], bos_token="<s>", eos_token="") == "<s>x"


def test_rendering_does_not_change_the_callers_messages():
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(SlmError):  # the sandbox is immutable: a template cannot mutate its inputs
        render_chat("{{ messages[0].update({'content': 'x'}) }}", messages, bos_token="", eos_token="")
    assert messages == [{"role": "user", "content": "hi"}]


# --- errors ---------------------------------------------------------------------------------------

def test_raise_exception_becomes_a_clear_slm_error():
    template = ChatTemplate(
        "{% if messages[0].role != 'user' %}"
        "{{ raise_exception('Conversation must start with user') }}"
        "{% endif %}"
    )
    expected = "the chat template rejected the conversation: Conversation must start with user"
    with pytest.raises(SlmError, match=expected):
        template.render([{"role": "assistant", "content": "x"}], bos_token="", eos_token="")
    assert template.render([{"role": "user", "content": "x"}], bos_token="", eos_token="") == ""


def test_a_template_that_does_not_parse_is_an_slm_error_with_its_line():
    with pytest.raises(SlmError, match=r"does not parse \(line 2\)"):
        ChatTemplate("ok\n{% for m in messages %}never closed")


def test_a_template_that_breaks_while_rendering_is_an_slm_error():
    with pytest.raises(SlmError, match="failed to render"):
        render_chat("{{ messages[0].content + 1 }}", CONVERSATIONS["user only"], bos_token="", eos_token="")


def test_the_sandbox_blocks_python_internals():
    with pytest.raises(SlmError, match="failed to render"):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", [], bos_token="", eos_token="")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("hello", "messages must be a list of dicts, got str"),
        ([["user", "hi"]], "messages[0]=['user', 'hi'] is not a dict"),
        ([{"content": "hi"}], "messages[0] has role=None; each message must be a dict with 'role' in "
                              "system, user, assistant, tool and 'content' a str"),
        (
            [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}],
            "messages[1] has role='robot'",
        ),
        ([{"role": "user"}], "messages[0] (role 'user') has content=None"),
        ([{"role": "user", "content": ["a", "b"]}], "messages[0] (role 'user') has content=['a', 'b']"),
    ],
)
def test_bad_messages_are_named(messages, message):
    with pytest.raises(ValueError) as err:
        validate_messages(messages)
    assert message in str(err.value)
    with pytest.raises(ValueError):
        render_chat("x", messages, bos_token="", eos_token="")


def test_module_imports_neither_torch_nor_transformers():
    code = (
        "import sys, slm.runtime.chat_template; "
        "bad = {'torch', 'transformers', 'onnx'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
