"""One request's generation on a worker thread, read on the event loop as batches of events.

    event loop                          worker thread (one of max_concurrent)
    ──────────                          ─────────────────────────────────────
    Generation.start(...) ─── submit ─► for event in engine.generate(..., cache, cancel):
    async for batch in gen.batches():◄──    loop.call_soon_threadsafe(queue.put_nowait, event)
    client gone: cancel.set() ────────► the engine stops at its next token ("cancelled")
                                        finally: on_done(cache) (the slot is free), then END

The cache goes back to the pool from the worker's `finally`, so a slot is free exactly when its
thread no longer touches the cache, whether the client read to the end, left, or the prompt failed.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from slm.runtime.constraint import Constraint
from slm.runtime.events import GenerationEvent
from slm.runtime.kv_cache import KVCache
from slm.runtime.sampling import SamplingParams

_END = object()


@dataclass(frozen=True)
class GenerationJob:
    """What to generate: the engine's `generate` arguments, minus the cache and the cancel event."""
    prompt: str | list[dict]
    raw: bool
    params: SamplingParams
    max_tokens: int
    stop: tuple[str, ...]
    constraint: Constraint | None = None
    tools: list[dict] | None = None         # for the chat template's `tools` variable


class Generation:
    def __init__(self, *, queue: asyncio.Queue, cancel: threading.Event):
        self._queue = queue
        self.cancel = cancel
        self.last: GenerationEvent | None = None

    @classmethod
    def start(cls, *, engine, job: GenerationJob, cache: KVCache, cancel: threading.Event, executor: Executor,
              on_done: Callable[[KVCache], None], metrics=None) -> Generation:
        """Submit the job; `on_done(cache)` runs on the event loop once the worker let go of the cache.
        `metrics` (slm.runtime.serve.metrics.Metrics) observes each event on the worker."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:    # the loop closed under us (server shutdown): nobody is reading
                pass

        def run() -> None:
            try:
                if cancel.is_set():     # the client left while waiting in line: spend nothing
                    return
                watch = metrics.watch(cache.evicted) if metrics is not None else None
                for event in engine.generate(job.prompt, params=job.params, max_tokens=job.max_tokens,
                                             stop=job.stop, raw=job.raw, cancel=cancel, cache=cache,
                                             constraint=job.constraint, tools=job.tools):
                    if watch is not None:
                        watch.see(event)
                    put(event)
            except BaseException as e:  # noqa: BLE001 - handed to the request, which maps it to a status
                put(e)
            finally:
                try:
                    loop.call_soon_threadsafe(on_done, cache)
                except RuntimeError:
                    pass
                put(_END)

        executor.submit(run)
        return cls(queue=queue, cancel=cancel)

    async def batches(self) -> AsyncIterator[list[GenerationEvent]]:
        """Events as they come, grouped by what had arrived when the reader got to them.

        Raises what the engine raised (SlmError for a bad prompt, on the first batch)."""
        while True:
            item = await self._queue.get()
            batch: list[GenerationEvent] = []
            while True:
                if item is _END:
                    if batch:
                        yield batch
                    return
                if isinstance(item, BaseException):
                    if batch:
                        yield batch
                    raise item
                batch.append(item)
                self.last = item
                if self._queue.empty():
                    break
                item = self._queue.get_nowait()
            yield batch
