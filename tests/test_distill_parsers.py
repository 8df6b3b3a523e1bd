"""Task parsers on the real PaLM-540B outputs released with the paper, malformed outputs, and safe arithmetic."""
from pathlib import Path

import pytest

from slm.distill import arith
from slm.distill.tasks import get_task
from slm.distill.tasks.base import Example, Parsed, Rejection, read_completions
from slm.core.errors import SlmError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "esnli-dss").is_dir(), reason="needs ../shared/data")


@pytest.mark.parametrize("text, value", [
    ("( 84.0 / 2.0 )", 42.0), ("( ( 17.0 + 15.0 ) + 2.0 )", 34.0), ("(7 * 36)", 252.0), ("-3 - -4", 1.0),
    ("5", 5.0), ("((32 + 42) - 35)", 39.0),
])
def test_arith_evaluates(text, value):
    assert arith.evaluate(text) == pytest.approx(value)


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "2 ** 10", "x + 1", "(2 * x)", "1 / 0", "abs(-1)", "(14, 21)",
    "(8 / 4) and (6 / 4)", "", "1 +", "[1]", "'a' * 3", "True + 1", "1" * 300,
])
def test_arith_rejects_anything_else(text):
    with pytest.raises(arith.NotArithmetic):
        arith.evaluate(text)
    assert arith.try_evaluate(text) is None


def _tally(task, split):
    examples = task.load(split)
    outputs = read_completions(task.recorded_outputs(split))
    tally = {"agree": 0, "disagree": 0, "unparseable": 0}
    for example, text in zip(examples, outputs, strict=True):
        parsed = task.parse_teacher(text, example)
        if isinstance(parsed, Rejection):
            tally[parsed.reason] += 1
        else:
            assert parsed.rationale and parsed.answer and "\n\nQ:" not in parsed.rationale
            tally["agree" if task.is_correct(parsed.answer, example) else "disagree"] += 1
    return tally


def test_svamp_palm_outputs_bundled():
    task = get_task("svamp")
    # PaLM-540B test accuracy 155/200 = 77.5%, as measured independently in ../shared/data/README.md
    assert _tally(task, "test") == {"agree": 155, "disagree": 38, "unparseable": 7}
    assert _tally(task, "train") == {"agree": 595, "disagree": 170, "unparseable": 35}


@needs_shared
def test_esnli_palm_outputs():
    tally = _tally(get_task("esnli", SHARED / "esnli-dss"), "train")
    assert tally == {"agree": 7201, "disagree": 2637, "unparseable": 4}  # 73.2%, as in the data README


@needs_shared
def test_cqa_palm_outputs():
    tally = _tally(get_task("cqa", SHARED / "cqa-dss"), "test")
    assert tally == {"agree": 962, "disagree": 243, "unparseable": 16}


def test_svamp_parse_malformed():
    task = get_task("svamp")
    e = Example(id="x", input="q", label="( 2.0 + 3.0 )")
    ok = task.parse_teacher("2 + 3 = 5. The answer is (2 + 3).\n\nQ: next. The answer is (9 * 9).", e)
    assert ok == Parsed(rationale="2 + 3 = 5.", answer="(2 + 3)") and task.is_correct(ok.answer, e)
    for text in ["", "I do not know.", "The answer is (2 * x).", "The answer is 5.", "x. The answer is (5, 6)."]:
        assert isinstance(task.parse_teacher(text, e), Rejection), text
    assert task.parse_prediction("( 2.0 + 3.0 )<junk", e).__class__ is Rejection
    assert task.is_correct(task.parse_prediction("(10 - 5)\nmore", e), e)


def test_esnli_and_cqa_parse_malformed():
    esnli = get_task("esnli", Path("."))
    e = Example(id="x", input="premise: a\nhypothesis: b", label="neutral")
    assert esnli.parse_teacher("Because.\nAnswer: Neutral\n\nPremise: z\nAnswer: entailment", e) == \
        Parsed("Because.", "neutral")
    assert isinstance(esnli.parse_teacher("Because.\nAnswer: maybe", e), Rejection)
    assert isinstance(esnli.parse_teacher("Answer: neutral", e), Rejection)  # no rationale: never a blank one
    cqa = get_task("cqa", Path("."))
    c = Example(id="y", input="q", label="pond", choices=("lake", "sea", "pond", "river", "bath"))
    assert cqa.parse_teacher("Ponds have frogs. So the answer is (c) pond.", c) == Parsed("Ponds have frogs.", "pond")
    assert cqa.parse_teacher("Ponds. So the answer is Pond.", c).answer == "pond"
    assert isinstance(cqa.parse_teacher("Hm. So the answer is either (a) lake or (c) pond.", c), Rejection)
    assert isinstance(cqa.parse_teacher("So the answer is (c) pond.", c), Rejection)


def test_jsonl_task(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"input": "2+2?", "label": "4", "rationale": "two and two"}\n'
                                          '{"input": "3+3?", "label": "6"}\n')
    (tmp_path / "test.jsonl").write_text('{"id": "t1", "input": "1+1?", "label": "2"}\n')
    task = get_task("jsonl", tmp_path)
    train = task.load("train")
    assert [e.id for e in train] == ["train-0", "train-1"] and train[1].rationale is None
    test = task.load("test")[0]
    assert test.id == "t1" and "Q: 2+2?\nA: two and two So the answer is 4.\n\nQ: 1+1?\nA:" == task.teacher_prompt(test)
    assert task.parse_teacher("one and one. So the answer is 2.", test) == Parsed("one and one.", "2")
    (tmp_path / "test.jsonl").write_text('{"input": "1+1?", "label": ""}\n')
    with pytest.raises(SlmError, match="non-empty 'label'"):
        task.load("test")


def test_user_errors_name_the_value():
    with pytest.raises(SlmError, match="unknown task 'nope'; accepted: svamp, esnli, cqa, jsonl"):
        get_task("nope")
    with pytest.raises(SlmError, match="unknown split 'dev'"):
        get_task("svamp").load("dev")
