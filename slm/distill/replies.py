"""Reading a live teacher's reply, in whatever format an instruct model chose to write it.

A chat model asked for `{"rationale": ..., "answer": ...}` usually writes that JSON, but small ones
also end with `\\boxed{6}`, "The answer is 6.", "**Answer:** 6" or a bare final line. `split_reply`
tries those formats in that order and returns the rationale, the answer text and the format's name;
the task then checks the answer (`task.answer_of`: an arithmetic expression for SVAMP, a class for
e-SNLI, one of the choices for CQA). Anything else is a `Rejection` with a stable reason, so failures
can be counted by kind.

    reply ─► split_reply ─► (rationale, answer text, format) ─► task.answer_of ─► Parsed | Rejection
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from slm.distill.tasks.base import Example, Parsed, Rejection, Task, cut

FORMATS = ("json", "boxed", "the answer is", "answer:", "final line")
NO_ANSWER = "no answer found (tried JSON, \\boxed{}, 'The answer is', 'Answer:', a final line)"
RATIONALE_KEYS = ("rationale", "reasoning", "explanation", "reason")

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:\-]?", re.IGNORECASE)
_ANSWER_COLON = re.compile(r"(?:^|\n)[ \t#>*_]*(?:final\s+)?answer[*_ ]*:[*_ ]*", re.IGNORECASE)
_DANGLING = re.compile(r"[\s,;:]*\b(?:so|thus|therefore|hence)[\s,;:]*$", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r'\\(?!["\\/bfnrtu])')
# TeX commands that JSON would read as an escape (\f of \frac is a form feed, \t of \times a tab)
_TEX = re.compile(r"(?<!\\)\\(?=(?:boxed|frac|tfrac|times|text|theta|to|neq|ne|nabla|right|rangle|rho|bar|beta)\b)")


@dataclass(frozen=True)
class Split:
    rationale: str
    answer: str     # the answer as written, cleaned of markup; the task decides if it is one
    format: str     # one of FORMATS


def parse_reply(task: Task, text: str, example: Example) -> Parsed | Rejection:
    """A live teacher's reply as (rationale, answer in the task's label form), or why not.

    The answer's format goes into `Parsed.format` so the store can say how each reply was read."""
    split = split_reply(cut(text, task.stop))
    if isinstance(split, Rejection):
        return split
    if not split.rationale:
        return Rejection("unparseable", f"empty rationale ({split.format})")
    answer = task.answer_of(split.answer, example)
    if isinstance(answer, Rejection):
        return Rejection(answer.reason, f"{answer.detail} ({split.format})")
    return Parsed(rationale=split.rationale, answer=answer, format=split.format)


def split_reply(text: str) -> Split | Rejection:
    text = text.strip()
    if not text:
        return Rejection("unparseable", "empty reply")
    for find in (_json, _boxed, _answer_is, _answer_colon, _final_line):
        found = find(text)
        if found is not None:
            return found
    return Rejection("unparseable", NO_ANSWER)


def clean_answer(text: str) -> str:
    """Strip markdown, TeX math delimiters, quotes and a final full stop from an answer."""
    text = text.strip()
    for token in ("**", "__", "`", "$", "\\(", "\\)", "\\[", "\\]"):
        text = text.replace(token, "")
    inner = _boxed_content(text)
    if inner is not None:
        text = inner
    return text.strip().strip("\"'").strip().rstrip(".").strip()


def _json(text: str) -> Split | None:
    obj = _json_object(text)
    if obj is None or "answer" not in obj:
        return None
    rationale = next((obj[k] for k in RATIONALE_KEYS if isinstance(obj.get(k), str)), "")
    answer = obj["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return None
    return Split(rationale=rationale.strip(), answer=clean_answer(str(answer)), format="json")


def _json_object(text: str) -> dict | None:
    """The reply as a JSON object: the whole text, inside a code fence, or from its first { to its last }."""
    fenced = _FENCE.match(text)
    candidates = [fenced.group(1)] if fenced else []
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        # small models write TeX (\frac, \times) inside JSON strings: keep such backslashes literal
        tex = _TEX.sub(r"\\\\", candidate)
        for attempt in (tex, _BAD_ESCAPE.sub(r"\\\\", tex)):
            try:
                obj = json.loads(attempt, strict=False)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _boxed(text: str) -> Split | None:
    at = text.rfind("\\boxed{")
    if at == -1:
        return None
    inner = _boxed_content(text[at:])
    if inner is None:
        return None
    line_start = text.rfind("\n", 0, at) + 1
    rationale = text[:line_start] if text[:line_start].strip() else text[:at]
    return Split(rationale=_tidy(rationale), answer=clean_answer(inner), format="boxed")


def _boxed_content(text: str) -> str | None:
    """The content of the first `\\boxed{...}` in `text`, braces balanced, or None."""
    at = text.find("\\boxed{")
    if at == -1:
        return None
    depth, start = 0, at + len("\\boxed{")
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[start:i]
            depth -= 1
    return None


def _after_last(pattern: re.Pattern, fmt: str):
    """A reader for replies whose answer follows the last match of `pattern` on the same line."""
    def read(text: str) -> Split | None:
        matches = list(pattern.finditer(text))
        if not matches:
            return None
        m = matches[-1]
        answer = _first_line(text[m.end():])
        if not answer:
            return None
        return Split(rationale=_tidy(text[:m.start()]), answer=clean_answer(answer), format=fmt)
    return read


_answer_is = _after_last(_ANSWER_IS, "the answer is")
_answer_colon = _after_last(_ANSWER_COLON, "answer:")


def _final_line(text: str) -> Split | None:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    return Split(rationale=_tidy("\n".join(lines[:-1])), answer=clean_answer(lines[-1]), format="final line")


def _first_line(text: str) -> str:
    """The first non-empty line (an answer may sit on the line after its marker)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _tidy(rationale: str) -> str:
    """The rationale without a dangling 'Therefore,' or markdown left where the answer was cut off."""
    rationale = rationale.strip().rstrip("*#_ \n")
    return _DANGLING.sub("", rationale).strip()
