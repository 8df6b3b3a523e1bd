"""Stage 1 of distilling step-by-step: ask a teacher for a rationale and an answer for every input.

    teacher ─► (example, reply) ─► teacher.parse ─► kept | rejected(reason) ─► store (JSONL)

Entry point: `generate_rationales`; `show_replies` is its dry run (nothing stored). Inputs already in
the store are skipped, so a killed run is resumed by running it again. Every input ends as exactly
one stored record (kept, or rejected with a reason) or is counted as a teacher failure and asked
again next time; nothing is dropped unseen.
A teacher whose replies mostly fail to parse stops the run after the first `ParseCheck.after` replies,
naming the commonest reasons and one reply, instead of filling the store with rejections.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from slm.core.errors import SlmError

from slm.distill.store import RationaleRecord, RationaleStore, StoreSummary
from slm.distill.tasks.base import Example, Parsed, Rejection, Task
from slm.distill.teachers.base import Reply, Teacher, TeacherFailure

UNPARSED = ("unparseable", "no_rationale")  # rejections that mean the reply could not be read


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


@dataclass(frozen=True)
class ParseCheck:
    """Stop when fewer than `min_rate` of the first `after` replies of a run parse (after=0: never)."""
    after: int = 20
    min_rate: float = 0.5

    def __post_init__(self) -> None:
        if self.after < 0 or not 0 <= self.min_rate <= 1:
            raise SlmError(f"parse check needs after >= 0 and min_rate in [0, 1], got {self.after}, {self.min_rate}")


def read_reply(task: Task, teacher: Teacher, example: Example, reply: str | Parsed) -> Parsed | Rejection:
    """The teacher's reply as a rationale and an answer, or the reason it cannot be used."""
    parsed = reply if isinstance(reply, Parsed) else teacher.parse(task, reply, example)
    if isinstance(parsed, Parsed) and not parsed.rationale.strip():
        return Rejection("no_rationale", "the teacher gave no rationale")
    return parsed


def reason_key(rejection: Rejection) -> str:
    """'unparseable: answer is not arithmetic' — the reason without the reply's own words, for counting."""
    return f"{rejection.reason}: {rejection.detail.split(': ')[0]}" if rejection.detail else rejection.reason


def show_replies(task: Task, split: str, teacher: Teacher, n: int
                 ) -> Iterator[tuple[Example, Reply, Parsed | Rejection | None]]:
    """The dry run: the teacher's replies to the first `n` inputs and how each parsed. Nothing is stored."""
    for example, reply in teacher.answer(task, task.load(split)[:n]):
        yield example, reply, None if isinstance(reply, TeacherFailure) else read_reply(task, teacher, example, reply)


def generate_rationales(task: Task, split: str, teacher: Teacher, out: str | Path, *,
                        filter_disagreeing: bool = False, limit: int | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        parse_check: ParseCheck = ParseCheck()) -> RationaleRun:
    """Fill `out` with one record per input of `task`/`split` (the first `limit` inputs if given).

    With `filter_disagreeing`, a rationale whose answer differs from the gold label is rejected
    (reason `disagrees_with_gold`) rather than kept.
    """
    examples = task.load(split)[:limit]
    store = RationaleStore(out, teacher=teacher.id, prompt_version=teacher.prompt_version(task))
    todo = [e for e in examples if e.id not in store]
    failures: Counter[str] = Counter()
    unparsed: Counter[str] = Counter()
    replies, example_reply = 0, {}
    for done, (example, reply) in enumerate(teacher.answer(task, todo), start=1):
        if isinstance(reply, TeacherFailure):
            failures[reply.detail[:80]] += 1
            continue
        completion = reply if isinstance(reply, str) else ""
        parsed = read_reply(task, teacher, example, reply)
        replies += 1
        if isinstance(parsed, Rejection) and parsed.reason in UNPARSED:
            unparsed[reason_key(parsed)] += 1
            example_reply.setdefault(reason_key(parsed), (example.id, completion))
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
                                     reason="disagrees_with_gold" if rejected else "",
                                     detail=f"format: {parsed.format}" if parsed.format else "")
        store.append(record)
        if replies == parse_check.after and sum(unparsed.values()) > (1 - parse_check.min_rate) * replies:
            raise SlmError(_mostly_unparsed(unparsed, example_reply, replies, store.path))
        if progress is not None:
            progress(done, len(todo))
    return RationaleRun(asked=len(todo), skipped=len(examples) - len(todo), failed=sum(failures.values()),
                        failures=dict(failures), store=store.summary())


def _mostly_unparsed(unparsed: Counter[str], example_reply: dict[str, tuple[str, str]], replies: int,
                     path: Path) -> str:
    top = unparsed.most_common(3)
    example_id, text = example_reply[top[0][0]]
    reasons = "; ".join(f"{key} x{count}" for key, count in top)
    return (f"the teacher's replies mostly fail to parse: {sum(unparsed.values())} of the first {replies} "
            f"({reasons}). A reply ({example_id}): {text[:300]!r}. Those records are stored in {path} as "
            "rejected; look at the replies with --show 5 and fix the prompt, --max-new-tokens or the model "
            "(a new --out file), or pass --parse-check 0 to go on anyway")
