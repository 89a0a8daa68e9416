"""Reply slots: where a local caller waits for the answer to a call or query.

Also the node's reply deadlines (:class:`ReplyDeadlines`): a local ``call``
does not open a cancel scope of its own to bound its wait; its reply slot is
put on one heap per node, and a single watcher task fails the slots whose
deadline has passed (see ``docs/performance.md``).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

import trio

__all__ = ["Reply", "ReplyDeadlines"]

_UNSET: Any = object()


class Reply:
    """One-shot slot one caller waits on for the answer to a call or query.

    Cheaper than a :class:`trio.Event`: it remembers the single waiting task
    and reschedules it directly.
    """

    __slots__ = ("_error", "_task", "_value", "abandoned", "done", "expired")

    def __init__(self) -> None:
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._task: trio.lowlevel.Task | None = None
        #: Set once a value, an error or the deadline has settled the slot.
        self.done = False
        #: Set when the deadline passed first (see :class:`ReplyDeadlines`).
        self.expired = False
        #: Set when the caller gave up (deadline passed, cancelled): the agent skips it.
        self.abandoned = False

    def set(self, value: Any) -> None:
        if not self.done:
            self._value = value
            self.done = True
            self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self._error = error
            self.done = True
            self._wake()

    def expire(self) -> None:
        """The caller's deadline passed: give up on the answer."""
        if not self.done:
            self.expired = True
            self.abandoned = True
            self.done = True
            self._wake()

    def _wake(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    def abort_wait(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def prepare_wait(self) -> None:
        """Make the current task the waiter of an unsettled slot; it must then
        ``await trio.lowlevel.wait_task_rescheduled(reply.abort_wait)`` at once
        and read :meth:`result` (the synchronous halves of :meth:`wait`)."""
        if self._task is not None:
            raise RuntimeError("a reply has a single waiter")
        self._task = trio.lowlevel.current_task()

    def result(self) -> Any:
        """The value of a settled slot, or raise its error (``None`` if expired)."""
        if self._error is not None:
            raise self._error
        return None if self._value is _UNSET else self._value

    async def wait(self) -> Any:
        """Wait until the slot is settled; return the value or raise the error.

        An expired slot returns ``None``: check :attr:`expired` first.
        A checkpoint, like every trio wait.
        """
        if self.done:
            await trio.lowlevel.checkpoint()
        else:
            self.prepare_wait()
            await trio.lowlevel.wait_task_rescheduled(self.abort_wait)
        return self.result()


class ReplyDeadlines:
    """Expires :class:`Reply` slots whose deadline passed, without a cancel
    scope per waiting call.

    One watcher task (a trio system task, started when the first slot is added
    and ending when none is left) sleeps until the earliest deadline and
    expires the slots still unsettled. Slots wait in two places: a FIFO lane
    for deadlines that do not go backwards (the common case: calls with the
    same timeout, one after another), where adding and dropping settled slots
    is O(1), and a heap for the others. Settled slots are dropped lazily: from
    the head of the lane whenever a slot is added, from the heap when they
    reach its top or when it is compacted. All times are
    :func:`trio.current_time`, so a :class:`trio.testing.MockClock` drives it.
    """

    #: Heap size below which settled entries are never compacted away.
    COMPACT_AT = 1024

    def __init__(self) -> None:
        self._lane: deque[tuple[float, Reply]] = deque()
        self._heap: list[tuple[float, int, Reply]] = []
        self._scope: trio.CancelScope | None = None
        self._running = False
        self._compact_at = self.COMPACT_AT

    def __len__(self) -> int:
        return len(self._lane) + len(self._heap)

    def add(self, deadline: float, reply: Reply) -> None:
        """Expire ``reply`` at ``deadline`` unless it is settled by then."""
        lane = self._lane
        while lane and lane[0][1].done:
            lane.popleft()
        if not lane or deadline >= lane[-1][0]:
            lane.append((deadline, reply))
        else:
            heap = self._heap
            if len(heap) >= self._compact_at:
                self._compact()
                heap = self._heap
            # id() breaks ties: the entry keeps the reply alive, so it is unique.
            heapq.heappush(heap, (deadline, id(reply), reply))
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._watch, name="jido_trio.reply-deadlines")
        elif self._scope is not None and deadline < self._scope.deadline:
            self._scope.deadline = deadline

    def flush(self) -> None:
        """Drop every settled slot now; if none is left unsettled, the watcher
        task ends at once instead of sleeping until the earliest deadline."""
        self._lane = deque(entry for entry in self._lane if not entry[1].done)
        self._compact()
        if not self._lane and not self._heap and self._scope is not None:
            self._scope.cancel()

    def _compact(self) -> None:
        heap = [entry for entry in self._heap if not entry[2].done]
        heapq.heapify(heap)
        self._heap = heap
        self._compact_at = max(self.COMPACT_AT, 2 * len(heap))

    def _expire_due(self, now: float) -> float:
        """Expire what is due at ``now``; return the next deadline (inf: none)."""
        lane = self._lane
        while lane and (lane[0][1].done or lane[0][0] <= now):
            lane.popleft()[1].expire()
        heap = self._heap
        while heap and (heap[0][2].done or heap[0][0] <= now):
            heapq.heappop(heap)[2].expire()
        return min(lane[0][0] if lane else math.inf, heap[0][0] if heap else math.inf)

    async def _watch(self) -> None:
        try:
            while True:
                deadline = self._expire_due(trio.current_time())
                if deadline == math.inf:
                    return
                with trio.CancelScope(deadline=deadline) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope = None
        finally:
            self._scope = None
            self._running = False
