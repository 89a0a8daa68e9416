"""Schedule points every N calls, for hot local operations.

Trio's convention is that every public ``async def`` is a checkpoint: a cancel
point *and* a schedule point. A scheduler round costs more than a local
``send_instruction`` or ``start_agent`` does otherwise, so these are a cancel
point on every call but a schedule point only once every N calls, like
Erlang's reductions (see docs/performance.md).
"""

from __future__ import annotations

import trio

__all__ = ["TELL_BUDGET", "TELL_SCHEDULE_EVERY", "ScheduleBudget"]


class ScheduleBudget:
    """Yields to the scheduler on every ``every``-th call.

    One counter for every task: while a task runs, only that task counts down,
    so no task makes ``every`` calls in a row without yielding (a task may
    yield sooner, when others have counted down before it). A per-task counter
    would need a context variable, and setting one in a task that spawns
    others leaves each child holding its own copy of the context's data.
    """

    __slots__ = ("_left", "every")

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.every = every
        self._left = every

    async def schedule_point(self) -> None:
        """Count one call; yield (a cancel-shielded schedule point) on every
        ``every``-th. The caller has passed a cancel point already."""
        left = self._left - 1
        if left > 0:
            self._left = left
        else:
            self._left = self.every
            await trio.lowlevel.cancel_shielded_checkpoint()

    def count(self) -> bool:
        """:meth:`schedule_point` without the coroutine: count one call and
        return whether the caller must yield now (``await
        trio.lowlevel.cancel_shielded_checkpoint()``)."""
        left = self._left - 1
        if left > 0:
            self._left = left
            return False
        self._left = self.every
        return True


#: A local tell that queues without waiting is a cancel point on every call
#: but a schedule point only once per this many such calls (no task makes
#: more in a row; like Erlang reductions); see docs/performance.md.
TELL_SCHEDULE_EVERY = 64

#: Counts the local tells that queued without waiting, whoever sent them.
TELL_BUDGET = ScheduleBudget(TELL_SCHEDULE_EVERY)
