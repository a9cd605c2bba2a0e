"""A Faust consumer whose per-message hand-off skips four tasks when it can.

Faust's fetch loop hands every message to the streams with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks
(callback, suspend_flow, stopped, crashed) and an ``asyncio.wait`` per message, ~25% of a
busy worker's CPU. The callback almost always finishes without suspending (it puts the
event into a channel queue that has room), so :class:`FastDrainConsumer` first runs it
synchronously; only when it really suspends (a full queue, producer back-pressure) is the
rest of it wrapped in a task and raced against ``suspend_flow`` as before. When the flow is
suspended, or the consumer stopped or crashed, the original path runs unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from mode.services import WaitResults

from streambill.agents.consumer import StreambillConsumer


class _Resume:
    """Awaitable that continues a coroutine already stepped once (it yielded ``pending``)."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro, self._pending = coro, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._pending
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation and the like go to the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _Resume(coro, pending)


class FastDrainConsumer(StreambillConsumer):
    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:  # noqa: ASYNC109
        if (
            len(coros) == 2
            and timeout is None
            and asyncio.iscoroutine(coros[0])
            and asyncio.iscoroutine(coros[1])
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
            and not self._crashed.is_set()
        ):
            first, second = coros
            try:
                pending = first.send(None)
            except StopIteration as stop:
                second.close()  # never started: the suspend_flow wait was not needed
                return WaitResults([first], [stop.value], False)
            task = asyncio.ensure_future(_finish(first, pending))
            return await super().wait_first(task, second)
        return await super().wait_first(*coros, timeout=timeout)
