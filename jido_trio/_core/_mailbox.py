"""Bounded per-agent mailbox with batch draining.

A deque plus the single consumer task (and a parking lot for senders waiting
for room) instead of a memory channel: the agent drains everything queued in
one go (one wake-up per batch, not per message), and the mailbox outlives the
agent task so messages wait through a restart.

The consumer may also be *dormant*: an agent that has no task yet leaves an
activation callback (:meth:`Mailbox.arm`) where a parked task would be; the
first thing that would wake a task (an item, :meth:`wake`, :meth:`close`)
calls it instead, once, and the callback gives the agent its task.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any
from typing import Generic
from typing import TypeVar

import trio

__all__ = ["Mailbox", "MailboxClosed"]

T = TypeVar("T")

_Task = trio.lowlevel.Task


class MailboxClosed(Exception):
    """Internal: the mailbox was closed; carries the error senders should see."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Mailbox(Generic[T]):
    """FIFO of at most ``capacity`` items; senders wait while it is full.

    One consumer at a time (the agent's current incarnation) waits in
    :meth:`wait`; it is rescheduled directly, without a parking lot. Instead
    of a waiting task, the box may hold an activation callback (:meth:`arm`).
    """

    __slots__ = ("_closed", "_items", "_not_full", "_waiter", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("mailbox capacity must be at least 1")
        self.capacity = capacity
        # Allocated on first use: an idle agent's empty mailbox stays small
        # (an empty deque alone is ~600 bytes, a parking lot ~300).
        self._items: deque[T] | None = None
        #: The consumer task parked in :meth:`wait`, or the callback that
        #: activates a dormant consumer (:meth:`arm`): whatever wakes one calls
        #: the other, so queueing costs the same either way.
        self._waiter: trio.lowlevel.Task | Callable[[], object] | None = None
        self._not_full: trio.lowlevel.ParkingLot | None = None
        self._closed: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def has_room(self) -> bool:
        """Whether :meth:`put_nowait` would queue an item now."""
        items = self._items
        return self._closed is None and (items is None or len(items) < self.capacity)

    def put_nowait(self, item: T) -> bool:
        """Queue ``item`` if there is room; return whether it was queued."""
        if self._closed is not None:
            raise MailboxClosed(self._closed)
        items = self._items
        if items is None:
            items = self._items = deque()
        elif len(items) >= self.capacity:
            return False
        items.append(item)
        if self._waiter is not None:
            self._wake()
        return True

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting for room (bound the wait with a cancel scope)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.put_nowait(item):
            if self._not_full is None:
                self._not_full = trio.lowlevel.ParkingLot()
            await self._not_full.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_for_room(self) -> None:
        """Wait until :meth:`put_nowait` would queue an item (bound the wait
        with a cancel scope); for a sender with a step to finish before it
        queues (see :meth:`put_admitted`).

        :raises MailboxClosed: the box is closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.has_room():
            if self._closed is not None:
                raise MailboxClosed(self._closed)
            if self._not_full is None:
                self._not_full = trio.lowlevel.ParkingLot()
            await self._not_full.park()

    def put_admitted(self, item: T) -> None:
        """Queue ``item`` even if that goes over capacity: it was admitted by
        :meth:`wait_for_room` before an await (a log append) during which
        other senders may have filled the box. Over by at most the number of
        such senders at once.

        :raises MailboxClosed: the box is closed.
        """
        if self._closed is not None:
            raise MailboxClosed(self._closed)
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        if self._waiter is not None:
            self._wake()

    def requeue_front(self, items: Iterable[T]) -> None:
        """Put items taken earlier back at the head, in their order (may exceed capacity
        briefly: they were already admitted)."""
        if self._items is None:
            self._items = deque()
        self._items.extendleft(reversed(list(items)))
        if self._items:
            self._wake()

    def take_batch(self, limit: int) -> list[T]:
        """Remove and return up to ``limit`` queued items without waiting."""
        items = self._items
        if not items:
            return []
        if len(items) <= limit:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(limit)]
        if self._not_full:
            self._not_full.unpark(count=len(batch))
        return batch

    async def wait(self) -> None:
        """Wait until an item is queued, :meth:`wake` is called or the box closes."""
        if self.prepare_wait():
            await trio.lowlevel.wait_task_rescheduled(self.abort_wait)
        else:
            await trio.lowlevel.checkpoint()

    def prepare_wait(self) -> bool:
        """The synchronous half of :meth:`wait`, for a consumer that parks
        itself (one coroutine frame less per idle agent): when nothing is
        queued and the box is open, make the current task the waiter and
        return True; it must then ``await
        trio.lowlevel.wait_task_rescheduled(mailbox.abort_wait)`` at once."""
        if self._items or self._closed is not None:
            return False
        if self._waiter is not None:
            raise RuntimeError("a mailbox has one consumer at a time")
        self._waiter = trio.lowlevel.current_task()
        return True

    def abort_wait(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def arm(self, activate: Callable[[], object]) -> None:
        """Call ``activate()`` (once) at the next wake-up: an item queued or put
        back, :meth:`wake` or :meth:`close`. For a consumer without a task (a
        dormant agent); :meth:`disarm` takes it back."""
        if self._waiter is not None:
            raise RuntimeError("a mailbox has one consumer at a time")
        self._waiter = activate

    def disarm(self) -> None:
        """Forget the callback :meth:`arm` left, if it was not called yet."""
        if self._waiter is not None and type(self._waiter) is not _Task:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if type(waiter) is _Task:
                trio.lowlevel.reschedule(waiter)
            else:
                waiter()  # type: ignore[operator]

    def wake(self) -> None:
        """Wake the consumer (to notice a stop or crash request)."""
        self._wake()

    def close(self, error: BaseException, on_item: Callable[[T], None]) -> None:
        """Refuse new items with ``error``, hand each queued item to ``on_item``,
        and wake everyone waiting."""
        self._closed = error
        while self._items:
            on_item(self._items.popleft())
        if self._not_full is not None:
            self._not_full.unpark_all()
        self._wake()

    def reopen(self) -> None:
        """Accept items again (an agent id started anew after it was stopped)."""
        self._closed = None
