"""Work queues: durable jobs handed out to competing consumer agents.

One dispatcher (``_dispatcher``) serves every backing: the built-in one in any
StateBackend (``_state_backing``) and those state engines offer through
:class:`jido_trio.abc.WorkQueueBackingProvider`. ``_queue`` holds the public
face, :func:`open_work_queue` and :class:`WorkQueue`.
"""

from __future__ import annotations

from ..abc import DeadJob as DeadJob
from ._queue import QueueStats as QueueStats
from ._queue import WorkQueue as WorkQueue
from ._queue import open_work_queue as open_work_queue
from ._state_backing import open_state_backing as open_state_backing

__all__ = ["DeadJob", "QueueStats", "WorkQueue", "open_state_backing", "open_work_queue"]
