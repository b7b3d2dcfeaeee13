"""Coalescing: concurrent requests share one decode call and one predictor call.

Each client request carries one image or a few; Triton batches well, but every request that
reaches it pays the HTTP parse, PyTriton's proxy and an ONNX Runtime call of its own, and
every request the transformer handles pays an executor hop for its decode. A
:class:`Coalescer` runs its function over everything submitted while the previous call was
running (no timer, so a lone request waits for nothing), then hands each caller its own
slice. Two of them make a pipeline: while Triton runs one batch, the next is decoded.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await submit(items)`` -> ``fn``'s results for those items, computed in a call that
    may include other callers' items (at most ``max_items`` per call, but a caller's items
    are never split). At most ``max_inflight`` calls run at once; whatever is submitted
    meanwhile waits and is merged into the next call. ``fn`` must return one result per item,
    in order; if it raises, every caller in that call gets the exception."""

    def __init__(self, fn: Callable[[list[T]], Awaitable[Sequence[R]]], max_items: int,
                 max_inflight: int = 1) -> None:
        if max_items < 1 or max_inflight < 1:
            raise ValueError("max_items and max_inflight must be at least 1")
        self.fn = fn
        self.max_items = max_items
        self.max_inflight = max_inflight
        self._pending: list[tuple[list[T], asyncio.Future]] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task] = set()  # strong references while they run
        self.calls = 0  # fn calls so far; items / calls is the batch formed (for tests and logs)
        self.items = 0

    async def submit(self, items: Sequence[T]) -> list[R]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), future))
        self._kick()
        return await future

    def _kick(self) -> None:
        while self._pending and self._inflight < self.max_inflight:
            group = self._take()
            if group:
                self._inflight += 1
                task = asyncio.get_running_loop().create_task(self._run(group))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[tuple[list[T], asyncio.Future]]:
        taken: list[tuple[list[T], asyncio.Future]] = []
        count = 0
        while self._pending:
            items, future = self._pending[0]
            if taken and count + len(items) > self.max_items:
                break
            self._pending.pop(0)
            if future.cancelled():  # its client went away: do not compute for it
                continue
            taken.append((items, future))
            count += len(items)
        return taken

    async def _run(self, group: list[tuple[list[T], asyncio.Future]]) -> None:
        flat = [item for items, _ in group for item in items]
        self.calls += 1
        self.items += len(flat)
        try:
            results = list(await self.fn(flat))
            if len(results) != len(flat):
                raise RuntimeError(f"batched call returned {len(results)} results for {len(flat)} items")
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of this call
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        else:
            start = 0
            for items, future in group:
                if not future.done():
                    future.set_result(results[start:start + len(items)])
                start += len(items)
        finally:
            self._inflight -= 1
            self._kick()
