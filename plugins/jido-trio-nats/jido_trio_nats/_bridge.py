"""Running nats-py (asyncio) from trio through a trio-asyncio loop.

Each :meth:`Bridge.run` schedules one asyncio task on the loop and waits for
it on the trio side; a trio cancellation cancels the asyncio task. Every hop
costs a few asyncio steps, and trio-asyncio runs each step as a trio
scheduling round, so hot paths put whole batches of work into one coroutine
(see :mod:`jido_trio_nats._state` reading a log, or the transport replying).

Leaving :func:`open_bridge` is bounded in time. trio-asyncio's own exit
cancels every asyncio task once and then waits for all of them, without a
limit; an asyncio task that swallows that one cancellation runs on and the
exit never returns. nats-py's reconnection loop is such a task: on Python
3.11, ``asyncio.wait_for`` returns the inner result instead of raising when
the cancellation arrives just as the inner operation (a socket connect)
finished, and the loop then goes on to the next server, forever. So
:meth:`Bridge.aclose` cancels the remaining tasks again and again until they
are done, and after its deadline leaves those that still run behind (logged)
rather than wait for them.

trio-asyncio's default exception handler raises whatever asyncio reports to
it (a task's exception nobody retrieved, say, of one nats-py started and
forgot) into the loop's nursery, which would end the node with a raw client
exception. The bridge's loop logs such reports instead.
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
#: Seconds between rounds of cancellation while the loop closes.
_CANCEL_AGAIN = 0.01
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
        if task.cancelled():
            # Not by our caller (that arrives as trio.Cancelled): nats-py
            # cancelled it as the connection closed, or the loop is stopping.
            raise Unreachable("this node's NATS connection closed during the operation")
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

    async def aclose(self, timeout: float) -> None:
        """Cancel every asyncio task of the loop, again and again until all
        are done or ``timeout`` seconds passed; tasks still running then are
        left behind (and logged), so that leaving the loop cannot hang."""
        deadline = trio.current_time() + timeout
        cancelled: set[asyncio.Task[Any]] = set()
        while True:
            running = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            if not running or trio.current_time() >= deadline:
                break
            for task in running:
                task.cancel()
            cancelled.update(running)
            await trio.sleep(_CANCEL_AGAIN)
        for task in cancelled:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.debug("an asyncio task failed as it stopped: %r", task.exception())
        if not running:
            return
        log.warning(
            "%d asyncio task(s) ignored cancellation for %gs and are left behind: %s",
            len(running),
            timeout,
            ", ".join(_describe(task) for task in running[:5]),
        )
        for task in running:
            # trio-asyncio waits for every registered task on exit: one
            # that never ends would keep the node from closing at all.
            asyncio.tasks._unregister_task(task)


async def _call(fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
    return await fn(*args, **kwargs)


def _describe(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", None) or task.get_name())


def _log_report(loop: Any, context: dict[str, Any]) -> None:
    """The loop's exception handler: log what asyncio reports, raise nothing."""
    error = context.get("exception")
    log.warning(
        "asyncio reported on the NATS client's loop: %s",
        context.get("message") or "an error",
        exc_info=error if isinstance(error, BaseException) else None,
    )


@asynccontextmanager
async def open_bridge(*, close_timeout: float) -> AsyncIterator[Bridge]:
    """Open a trio-asyncio loop for the duration of the block; leaving it
    takes at most about ``close_timeout`` seconds (see :meth:`Bridge.aclose`)."""
    try:
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_log_report)
            bridge = Bridge(loop=loop)
            try:
                yield bridge
            finally:
                bridge.cancel_background()
                with trio.CancelScope(shield=True):
                    await bridge.aclose(close_timeout)
    except BaseExceptionGroup as group:
        # The loop's nursery wraps whatever passes through it (the node's own
        # errors included); callers must see them as they would without NATS.
        failure = single_failure(group)
        if failure is None:
            raise
        raise failure  # noqa: B904 - the group is only a wrapper
