"""Reading instruct-model replies: each format a chat teacher writes, per task, and what is refused."""
import json
from pathlib import Path

import pytest

from slm.distill.rationales import ParseCheck, generate_rationales, reason_key
from slm.distill.replies import parse_reply, split_reply
from slm.distill.tasks import get_task
from slm.distill.tasks.base import Example, Parsed, Rejection
from slm.distill.teachers.chat import RESPONSE_FORMAT, chat_messages
from slm.core.errors import SlmError

SVAMP = get_task("svamp")
GOLD = Example(id="x", input="There are 15 trees ... How many were planted?", label="( 21.0 - 15.0 )")


@pytest.mark.parametrize("reply, fmt, answer", [
    ('{"rationale": "21 trees after, 15 before: 21 - 15 = 6.", "answer": "(21 - 15)"}', "json", "(21 - 15)"),
    ('```json\n{"rationale": "21 - 15 = 6.", "answer": 6}\n```', "json", "6"),
    ('Sure! {"reasoning": "21 - 15 = 6.", "answer": "6"} Hope that helps.', "json", "6"),
    ('{"rationale": "We compute \\(21 - 15\\) = 6.", "answer": "\\frac{12}{2}"}', "json", "(12 / 2)"),
    ("21 trees after, 15 before.\nSo 21 - 15 = 6.\n\nTherefore, the answer is $\\boxed{6}$.", "boxed", "6"),
    ("We subtract: 21 - 15 = 6. \\boxed{21 - 15}", "boxed", "21 - 15"),
    ("21 - 15 = 6. The answer is (21 - 15).\n\nQ: next one. The answer is (9 * 9).", "the answer is", "(21 - 15)"),
    ("21 - 15 = 6 trees.\nThe final answer is: 6 trees.", "the answer is", "6"),
    ("Step 1: 21 - 15 = 6.\n**Answer:** 6", "answer:", "6"),
    ("Step 1: 21 - 15 = 6.\nFinal Answer:\n21 - 15 = 6", "answer:", "6"),
    ("They planted 21 - 15 trees.\n6", "final line", "6"),
    ("15 trees were there; 21 are now.\n21 − 15", "final line", "21 - 15"),
    ("15 trees before, 21 after: 21 minus 15.\n21 × 1 − 15 = 6", "final line", "6"),
])
def test_svamp_reply_formats(reply, fmt, answer):
    parsed = parse_reply(SVAMP, reply, GOLD)
    assert isinstance(parsed, Parsed), parsed
    assert (parsed.format, parsed.answer) == (fmt, answer)
    assert parsed.rationale and "answer" not in parsed.rationale.lower().split()[-1]
    assert "boxed" not in parsed.rationale and "\n\nQ:" not in parsed.rationale


def test_rationale_is_the_text_before_the_answer():
    parsed = parse_reply(SVAMP, "21 after, 15 before.\nSo 21 - 15 = 6.\nTherefore, the answer is \\boxed{6}.", GOLD)
    assert parsed.rationale == "21 after, 15 before.\nSo 21 - 15 = 6."
    assert parse_reply(SVAMP, "21 - 15 = 6, so the answer is 6.", GOLD).rationale == "21 - 15 = 6"


@pytest.mark.parametrize("reply, reason", [
    ("", "empty reply"),
    ("I cannot solve this.", "no answer found"),
    ('{"rationale": "", "answer": "6"}', "empty rationale (json)"),
    ("Think.\nThe answer is unknown.", "answer is not arithmetic"),
    ('{"rationale": "x", "answer": ["6"]}', "no answer found"),     # a JSON answer must be a string or number
])
def test_unreadable_replies_are_rejected_with_a_stable_reason(reply, reason):
    parsed = parse_reply(SVAMP, reply, GOLD)
    assert isinstance(parsed, Rejection) and parsed.reason == "unparseable"
    assert parsed.detail.startswith(reason), parsed.detail


def test_classification_tasks_map_answers_to_labels(tmp_path):
    esnli = get_task("esnli", Path("."))
    e = Example(id="e", input="premise: a dog runs\nhypothesis: an animal moves", label="entailment")
    assert parse_reply(esnli, '{"rationale": "A dog is an animal.", "answer": "Entailment"}', e).answer == "entailment"
    assert parse_reply(esnli, "A dog is an animal.\nAnswer: the premise entails it", e).answer == "entailment"
    assert isinstance(parse_reply(esnli, "Hmm.\nAnswer: entailment or neutral", e), Rejection)
    cqa = get_task("cqa", Path("."))
    c = Example(id="c", input="q", label="pond", choices=("lake", "sea", "pond", "river", "bath"))
    for answer in ("(c) pond", "c", "C)", "Pond", "the pond", "(c)"):
        assert parse_reply(cqa, json.dumps({"rationale": "Frogs live there.", "answer": answer}), c).answer == "pond"
    assert isinstance(parse_reply(cqa, '{"rationale": "r", "answer": "lake or pond"}', c), Rejection)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"input": f"q{i}", "label": ["yes", "no"][i % 2]}) + "\n"
                                                  for i in range(6)))
    (tmp_path / "test.jsonl").write_text('{"input": "q", "label": "yes"}\n')
    jsonl = get_task("jsonl", tmp_path)
    row = jsonl.load("test")[0]
    assert jsonl.label_set == ("no", "yes") and "exactly one of: no, yes" in jsonl.answer_spec(row)
    assert parse_reply(jsonl, "Because so.\nAnswer: **Yes**", row).answer == "yes"
    assert isinstance(parse_reply(jsonl, "Because so.\nAnswer: maybe", row), Rejection)


def test_chat_messages_give_the_format_and_the_shots():
    messages = chat_messages(SVAMP, GOLD)
    assert messages[0]["role"] == "system" and '"rationale"' in messages[0]["content"]
    assert "arithmetic expression" in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 4 + ["user"]
    shot = json.loads(messages[2]["content"])
    assert set(shot) == {"rationale", "answer"} and shot["answer"] == "(21 - 15)"
    assert messages[-1]["content"] == " ".join(GOLD.input.split())
    schema = RESPONSE_FORMAT["json_schema"]
    assert schema["strict"] and schema["schema"]["required"] == ["rationale", "answer"]


def test_jsonl_without_rationales_still_tells_the_format(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"input": "Capital of France?", "label": "Paris"}\n')
    (tmp_path / "test.jsonl").write_text('{"input": "Capital of Peru?", "label": "Lima"}\n')
    (tmp_path / "instruction.txt").write_text("Name the capital city of the country.")
    task = get_task("jsonl", tmp_path)
    messages = chat_messages(task, task.load("test")[0])
    assert len(messages) == 2 and "Name the capital city" in messages[0]["content"]
    assert '{"rationale"' in messages[0]["content"]


class _Scripted:
    """A fake teacher replying from a list (parsing logic only; the HTTP path has its own tests)."""
    id = "scripted"

    def __init__(self, replies):
        self.replies = replies

    def prompt_version(self, task):
        return "v"

    def parse(self, task, text, example):
        return parse_reply(task, text, example)

    def answer(self, task, examples):
        yield from zip(examples, self.replies)


def test_a_teacher_that_mostly_fails_to_parse_stops_the_run(tmp_path):
    replies = ["I am not sure."] * 12 + ["Hmm.\nThe answer is many."] * 5 + ["3 - 1 = 2.\nThe answer is (3 - 1)."] * 3
    with pytest.raises(SlmError) as e:
        generate_rationales(SVAMP, "train", _Scripted(replies + replies), tmp_path / "r.jsonl",
                            parse_check=ParseCheck(after=20))
    message = str(e.value)
    assert "17 of the first 20" in message
    assert "unparseable: no answer found" in message and "x12" in message
    assert "unparseable: answer is not arithmetic x5" in message and "I am not sure." in message
    assert (tmp_path / "r.jsonl").read_text().count("\n") == 20     # stored so far, nothing lost unseen
    run = generate_rationales(SVAMP, "train", _Scripted(replies), tmp_path / "ok.jsonl", limit=20,
                              parse_check=ParseCheck(after=0))      # 0: never stop
    assert run.store.kept == 3 and run.store.rejected == {"unparseable": 17}


def test_reason_key_drops_the_reply_words():
    assert reason_key(Rejection("unparseable", "answer is not arithmetic: 'many' (boxed)")) == \
        "unparseable: answer is not arithmetic"
    assert split_reply("one line only") == Rejection("unparseable", split_reply("x").detail)
