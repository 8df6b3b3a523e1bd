"""The rationale store and the rationale stage: resumable, repaired after a kill, nothing lost or blank."""
import json

import pytest

from slm.distill.rationales import generate_rationales
from slm.distill.store import RationaleRecord, RationaleStore, read_kept, unread_lines
from slm.distill.tasks import get_task
from slm.distill.teachers import HumanTeacher, RecordedTeacher, TeacherFailure
from slm.core.errors import SlmError


def _record(i, **kw):
    base = dict(id=f"train-{i}", task="svamp", split="train", teacher="t", prompt_version="p", input="q",
                label="( 1.0 + 1.0 )", status="kept", rationale="r", answer="(1 + 1)")
    return RationaleRecord(**(base | kw))


def test_store_appends_and_reloads(tmp_path):
    path = tmp_path / "r.jsonl"
    store = RationaleStore(path, teacher="t", prompt_version="p")
    store.append(_record(0))
    store.append(_record(1, status="rejected", rationale="", answer="", reason="unparseable"))
    again = RationaleStore(path, teacher="t", prompt_version="p")
    assert "train-0" in again and "train-1" in again and again.summary().line() == \
        "kept 1 / rejected 1 (unparseable 1)"
    with pytest.raises(ValueError):
        again.append(_record(0))
    assert [r.id for r in read_kept(path)] == ["train-0"]
    assert json.loads(path.read_text().splitlines()[0])["format"] == 1


def test_store_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    RationaleStore(path, teacher="t", prompt_version="p").append(_record(0))
    with path.open("a") as f:
        f.write('{"id": "train-1", "task": "sva')  # what a kill in the middle of a write leaves
    assert [r.id for r in read_kept(path)] == ["train-0"]
    assert unread_lines(path) == {"partial_last_line": 1}           # skipped, and counted for training's left_out
    store = RationaleStore(path, teacher="t", prompt_version="p")
    assert unread_lines(path) == {}
    assert store.repaired_partial_lines == 1 and list(store.records) == ["train-0"]
    assert path.read_text().endswith("}\n")


def test_store_refuses_mixing_teachers_and_corruption(tmp_path):
    path = tmp_path / "r.jsonl"
    RationaleStore(path, teacher="t", prompt_version="p").append(_record(0))
    with pytest.raises(SlmError, match="teacher 't'"):
        RationaleStore(path, teacher="other", prompt_version="p")
    path.write_text(path.read_text() * 2)
    with pytest.raises(SlmError, match="duplicate id 'train-0'"):
        RationaleStore(path, teacher="t", prompt_version="p")
    path.write_text("not json\n")
    with pytest.raises(SlmError, match="corrupt"):
        RationaleStore(path, teacher="t", prompt_version="p")


def test_recorded_palm_run_resumes_and_counts(tmp_path):
    task = get_task("svamp")
    teacher = RecordedTeacher.for_split(task, "test")
    out = tmp_path / "svamp.jsonl"
    first = generate_rationales(task, "test", teacher, out, limit=50)
    assert first.asked == 50 and first.skipped == 0
    full = generate_rationales(task, "test", teacher, out)
    assert full.asked == 150 and full.skipped == 50
    assert full.store.kept == 193 and full.store.rejected == {"unparseable": 7}
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 200
    kept = read_kept(out)
    assert all(r.rationale.strip() and r.answer.strip() for r in kept)  # never a blank label or rationale
    assert sum(r.agrees_with_gold for r in kept) == 155

    filtered = generate_rationales(task, "test", teacher, tmp_path / "f.jsonl", filter_disagreeing=True)
    assert filtered.store.kept == 155 and filtered.store.rejected == {"unparseable": 7, "disagrees_with_gold": 38}


def test_teacher_failures_are_counted_not_stored(tmp_path):
    task = get_task("svamp")
    examples = task.load("test")[:3]

    class HalfDown:
        id = "flaky"

        def prompt_version(self, task):
            return "v"

        def parse(self, task, text, example):
            return task.parse_teacher(text, example)

        def answer(self, task, examples):
            for i, e in enumerate(examples):
                yield e, TeacherFailure("timeout") if i == 1 else "a. The answer is (1 + 1)."

    run = generate_rationales(task, "test", HalfDown(), tmp_path / "r.jsonl", limit=3)
    assert (run.failed, run.failures, run.store.kept) == (1, {"timeout": 1}, 2)
    assert examples[1].id not in RationaleStore(tmp_path / "r.jsonl", teacher="flaky", prompt_version="v")


def test_human_teacher_rejects_missing_rationales(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"input": "a", "label": "x", "rationale": "because"}\n'
                                          '{"input": "b", "label": "y"}\n')
    task = get_task("jsonl", tmp_path)
    run = generate_rationales(task, "train", HumanTeacher(), tmp_path / "r.jsonl")
    assert run.store.kept == 1 and run.store.rejected == {"no_rationale": 1}
