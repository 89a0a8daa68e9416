"""Schedule points every N calls per task, for hot local operations.

Trio's convention is that every public ``async def`` is a checkpoint: a cancel
point *and* a schedule point. A scheduler round costs more than a local
``send_instruction`` or ``start_agent`` does otherwise, so these are a cancel
point on every call but a schedule point only once every N calls per task,
like Erlang's reductions (see docs/performance.md).
"""

from __future__ import annotations

from contextvars import ContextVar

import trio

__all__ = ["ScheduleBudget"]


class ScheduleBudget:
    """Counts calls per task (per contextvars context: trio gives each task its
    own copy) and yields to the scheduler on every ``every``-th one."""

    __slots__ = ("_left", "every")

    def __init__(self, name: str, every: int) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.every = every
        self._left: ContextVar[int] = ContextVar(name, default=every)

    async def schedule_point(self) -> None:
        """Count one call; yield (a cancel-shielded schedule point) on every
        ``every``-th. The caller has passed a cancel point already."""
        left = self._left.get() - 1
        if left > 0:
            self._left.set(left)
        else:
            self._left.set(self.every)
            await trio.lowlevel.cancel_shielded_checkpoint()
