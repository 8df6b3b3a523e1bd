"""Task adapters, chosen by name: svamp, esnli, cqa (as released with the paper) and jsonl (your own)."""
from __future__ import annotations

from pathlib import Path

from slm.core.errors import SlmError

from slm.distill.tasks.base import Example, Parsed, Rejection, Task
from slm.distill.tasks.cqa import CqaTask
from slm.distill.tasks.esnli import EsnliTask
from slm.distill.tasks.jsonl import JsonlTask
from slm.distill.tasks.svamp import SvampTask

TASKS = {"svamp": SvampTask, "esnli": EsnliTask, "cqa": CqaTask, "jsonl": JsonlTask}

__all__ = ["Example", "Parsed", "Rejection", "Task", "TASKS", "get_task"]


def get_task(name: str, data_dir: str | Path | None = None) -> Task:
    """The adapter for `name`, reading its files from `data_dir` (SVAMP defaults to the bundled copy)."""
    if name not in TASKS:
        raise SlmError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")
    if data_dir is None:
        if name != "svamp":
            raise SlmError(f"task {name!r} needs a data folder (e.g. ../shared/data/{name}-dss); pass --data")
        return SvampTask()
    path = Path(data_dir)
    if not path.is_dir():
        raise SlmError(f"data folder not found: {path}")
    return TASKS[name](data_dir=path)
