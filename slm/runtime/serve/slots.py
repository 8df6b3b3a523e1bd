"""Slots: the pre-allocated KV caches that concurrent requests take turns on, and the line for them.

    request ─► acquire() ─► a cache (at once, or after waiting in a line of at most max_queue)
                   │                          ─► QueueFullError when the line is full (HTTP 429)
    worker thread done ─► release(cache) ─► the first waiter gets it

`max_concurrent` caches are made once, each of the engine's budget, and reused: a request never
allocates KV memory, so the server's KV memory is `max_concurrent × budget`, whatever the load.
All methods run on the event loop; worker threads hand caches back with `call_soon_threadsafe`.
"""
from __future__ import annotations

import asyncio
from collections import deque

from slm.runtime.kv_cache import KVCache


class QueueFullError(Exception):
    def __init__(self, *, waiting: int, max_queue: int):
        super().__init__(f"all generation slots are busy and {waiting} requests are already waiting "
                         f"(--max-queue {max_queue}); retry shortly")
        self.waiting, self.max_queue = waiting, max_queue


class SlotPool:
    def __init__(self, caches: list[KVCache], *, max_queue: int):
        if not caches:
            raise ValueError("a SlotPool needs at least one cache (max_concurrent >= 1)")
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue} must be >= 0")
        self.total = len(caches)
        self.max_queue = max_queue
        self._idle: list[KVCache] = list(caches)
        self._waiters: deque[asyncio.Future[KVCache]] = deque()

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> KVCache:
        """An idle cache, waiting in line (first come, first served) if none is idle."""
        if self._idle and not self._waiters:
            return self._idle.pop()
        if len(self._waiters) >= self.max_queue:
            raise QueueFullError(waiting=len(self._waiters), max_queue=self.max_queue)
        waiter: asyncio.Future[KVCache] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():   # handed a cache as it was cancelled: pass it on
                self.release(waiter.result())
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, cache: KVCache) -> None:
        """Give `cache` to the first live waiter, or back to the idle list."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(cache)
                return
        self._idle.append(cache)
