"""Stage 1 of distilling step-by-step: ask a teacher for a rationale and an answer for every input.

    teacher ─► (example, reply) ─► task.parse_teacher ─► kept | rejected(reason) ─► store (JSONL)

Entry point: `generate_rationales`. Inputs already in the store are skipped, so a killed run is
resumed by running it again. Every input ends as exactly one stored record (kept, or rejected with
a reason) or is counted as a teacher failure and asked again next time; nothing is dropped unseen.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distill.store import RationaleRecord, RationaleStore, StoreSummary
from distill.tasks.base import Parsed, Rejection, Task
from distill.teachers.base import Teacher, TeacherFailure


@dataclass(frozen=True)
class RationaleRun:
    """What one run did, and the state of the whole store after it."""
    asked: int                  # inputs sent to the teacher in this run
    skipped: int                # inputs already stored by an earlier run
    failed: int                 # teacher failures (not stored: the next run asks again)
    failures: dict[str, int]    # failure detail (first 80 chars) -> count
    store: StoreSummary

    def line(self) -> str:
        return (f"{self.store.line()}; this run: asked {self.asked}, already stored {self.skipped}, "
                f"teacher failures {self.failed} (asked again on the next run)")


def generate_rationales(task: Task, split: str, teacher: Teacher, out: str | Path, *,
                        filter_disagreeing: bool = False, limit: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> RationaleRun:
    """Fill `out` with one record per input of `task`/`split` (the first `limit` inputs if given).

    With `filter_disagreeing`, a rationale whose answer differs from the gold label is rejected
    (reason `disagrees_with_gold`) rather than kept.
    """
    examples = task.load(split)[:limit]
    store = RationaleStore(out, teacher=teacher.id, prompt_version=teacher.prompt_version(task))
    todo = [e for e in examples if e.id not in store]
    failures: Counter[str] = Counter()
    for done, (example, reply) in enumerate(teacher.answer(task, todo), start=1):
        if isinstance(reply, TeacherFailure):
            failures[reply.detail[:80]] += 1
            continue
        completion = reply if isinstance(reply, str) else ""
        parsed = reply if isinstance(reply, Parsed) else task.parse_teacher(reply, example)
        if isinstance(parsed, Parsed) and not parsed.rationale.strip():
            parsed = Rejection("no_rationale", "the teacher gave no rationale")
        base = dict(id=example.id, task=task.name, split=split, teacher=teacher.id,
                    prompt_version=store.prompt_version, input=example.input, label=example.label,
                    completion=completion)
        if isinstance(parsed, Rejection):
            record = RationaleRecord(**base, status="rejected", reason=parsed.reason, detail=parsed.detail)
        else:
            agrees = task.is_correct(parsed.answer, example)
            rejected = filter_disagreeing and not agrees
            record = RationaleRecord(**base, status="rejected" if rejected else "kept", rationale=parsed.rationale,
                                     answer=parsed.answer, agrees_with_gold=agrees,
                                     reason="disagrees_with_gold" if rejected else "")
        store.append(record)
        if progress is not None:
            progress(done, len(todo))
    return RationaleRun(asked=len(todo), skipped=len(examples) - len(todo), failed=sum(failures.values()),
                        failures=dict(failures), store=store.summary())
