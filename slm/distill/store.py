"""The rationale store: one JSON line per task input, appended and fsynced as each answer arrives.

Resumable by construction: a re-run reads the ids already present and asks the teacher only for the
rest. A run killed mid-write leaves at most one partial last line; opening the store cuts it off (and
says so), so a record is either whole and kept, or absent and asked again: never lost, never doubled.
Rejected answers are stored too, with their reason, so a re-run does not ask again and the summary
can say `kept N / rejected M`.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from slm.core.errors import SlmError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RationaleRecord:
    id: str
    task: str
    split: str
    teacher: str            # teacher id, e.g. "recorded:palm-540b" or "openai:model@url"
    prompt_version: str     # version of the few-shot prompt the teacher saw
    input: str
    label: str              # gold label
    status: str             # "kept" | "rejected"
    rationale: str = ""     # set when kept
    answer: str = ""        # the teacher's answer, set when kept
    agrees_with_gold: bool | None = None
    reason: str = ""        # set when rejected: "unparseable", "disagrees_with_gold", "no_rationale"
    detail: str = ""
    completion: str = ""    # the teacher's raw text, for inspection
    format: int = FORMAT_VERSION


@dataclass(frozen=True)
class StoreSummary:
    kept: int
    rejected: dict[str, int]
    repaired_partial_lines: int

    def line(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        return f"kept {self.kept} / rejected {sum(self.rejected.values())} ({reasons})"


class RationaleStore:
    """Append-only JSONL of `RationaleRecord`s for one (task, split, teacher, prompt version)."""

    def __init__(self, path: str | Path, *, teacher: str, prompt_version: str) -> None:
        self.path = Path(path)
        self.teacher, self.prompt_version = teacher, prompt_version
        self.repaired_partial_lines = 0
        self.records: dict[str, RationaleRecord] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a kill mid-write: the tail after the last newline is a partial record
            with self.path.open("r+b") as f:
                f.truncate(end)
            self.repaired_partial_lines = 1
        for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = RationaleRecord(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as e:
                raise SlmError(f"{self.path}:{number}: not a rationale record ({e}); the store is corrupt") from e
            if (record.teacher, record.prompt_version) != (self.teacher, self.prompt_version):
                raise SlmError(f"{self.path} holds rationales from teacher {record.teacher!r} "
                               f"(prompt {record.prompt_version!r}), not {self.teacher!r} "
                               f"(prompt {self.prompt_version!r}); use a new output file")
            if record.id in self.records:
                raise SlmError(f"{self.path}:{number}: duplicate id {record.id!r}; the store is corrupt")
            self.records[record.id] = record

    def __contains__(self, example_id: str) -> bool:
        return example_id in self.records

    def append(self, record: RationaleRecord) -> None:
        """Write one whole line with a single `write` and fsync it before returning."""
        if record.id in self.records:
            raise ValueError(f"record {record.id!r} is already stored")
        line = (json.dumps(asdict(record), ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records[record.id] = record

    def kept(self) -> list[RationaleRecord]:
        return [r for r in self.records.values() if r.status == "kept"]

    def summary(self) -> StoreSummary:
        rejected = Counter(r.reason for r in self.records.values() if r.status == "rejected")
        return StoreSummary(kept=len(self.kept()), rejected=dict(rejected),
                            repaired_partial_lines=self.repaired_partial_lines)


def unread_lines(path: str | Path) -> Counter:
    """What `read_kept` leaves unread, by reason, for training's `left_out`: a partial last line a
    killed run left (the next `rationales` run repairs it; until then its record is not there)."""
    text = Path(path).read_bytes()
    return Counter({"partial_last_line": 1}) if text and not text.endswith(b"\n") else Counter()


def read_kept(path: str | Path) -> list[RationaleRecord]:
    """The kept records of a store file, whatever teacher made it (for training); a partial last line
    is skipped, and counted by `unread_lines`."""
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"rationale file not found: {path}")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a partial last line from a killed run; the next `rationales` run repairs it
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = RationaleRecord(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as e:
            raise SlmError(f"{path}:{number}: not a rationale record ({e})") from e
        if record.status == "kept":
            records.append(record)
    return records
