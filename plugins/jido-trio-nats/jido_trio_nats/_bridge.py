"""Running nats-py (asyncio) from trio through a trio-asyncio loop.

Each :meth:`Bridge.run` schedules one asyncio task on the loop and waits for
it on the trio side; a trio cancellation cancels the asyncio task. Every hop
costs a few asyncio steps, and trio-asyncio runs each step as a trio
scheduling round, so hot paths put whole batches of work into one coroutine
(see :mod:`jido_trio_nats._state` reading a log, or the transport replying).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any
from typing import ParamSpec
from typing import TypeVar

import attrs
import trio
import trio_asyncio

from jido_trio import Unreachable
from jido_trio.abc import single_failure

__all__ = ["Bridge", "open_bridge"]

log = logging.getLogger("jido_trio_nats.bridge")

P = ParamSpec("P")
T = TypeVar("T")


@attrs.define(eq=False)
class Bridge:
    """Runs asyncio coroutine functions on one trio-asyncio loop."""

    loop: Any
    _background: set[asyncio.Task[Any]] = attrs.field(factory=set)

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` on the asyncio side and return its result.

        Cancelling the trio caller cancels the asyncio task.

        :raises Unreachable: the node's NATS connection is closed already.
        """
        if self.loop.is_closed():
            await trio.lowlevel.checkpoint()
            raise Unreachable("this node's NATS connection is closed")
        task: asyncio.Task[T] = self.loop.create_task(_call(fn, args, kwargs))
        done = trio.Event()
        task.add_done_callback(lambda _task: done.set())
        try:
            await done.wait()
        finally:
            if not task.done():
                task.cancel()
        return task.result()

    def submit(self, fn: Callable[P, Awaitable[Any]], *args: P.args, **kwargs: P.kwargs) -> None:
        """Start ``fn`` on the asyncio side without waiting; failures are logged."""
        task = self.loop.create_task(_call(fn, args, kwargs))
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background NATS operation failed: %r", task.exception())

    def cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()


async def _call(fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
    return await fn(*args, **kwargs)


@asynccontextmanager
async def open_bridge() -> AsyncIterator[Bridge]:
    """Open a trio-asyncio loop for the duration of the block."""
    try:
        async with trio_asyncio.open_loop() as loop:
            bridge = Bridge(loop=loop)
            try:
                yield bridge
            finally:
                bridge.cancel_background()
    except BaseExceptionGroup as group:
        # The loop's nursery wraps whatever passes through it (the node's own
        # errors included); callers must see them as they would without NATS.
        failure = single_failure(group)
        if failure is None:
            raise
        raise failure  # noqa: B904 - the group is only a wrapper
