"""The four protocols between the runtime and its engines.

A plugin implements any of :class:`Registry`, :class:`Transport`,
:class:`StateBackend` and :class:`Coordination` and registers a factory for it
by name through the ``jido_trio_add_backends`` hook (see
:mod:`jido_trio.hookspecs`). Every method is ``async`` and is a Trio
checkpoint. Implementations that own resources (connections, threads, tasks)
are returned by their factory as async context managers; the node enters them
in order (state, registry, coordination, transport) and exits them in reverse.

Errors each method may raise are named in its docstring; implementations must
not raise anything else for the outcomes described there.
"""

from __future__ import annotations

from ._coordination import Coordination as Coordination
from ._coordination import Lease as Lease
from ._registry import Registry as Registry
from ._registry import RegistryEntry as RegistryEntry
from ._registry import RegistryEvent as RegistryEvent
from ._state import Consistency as Consistency
from ._state import LogEntry as LogEntry
from ._state import StateBackend as StateBackend
from ._state import Versioned as Versioned
from ._transport import NodeInfo as NodeInfo
from ._transport import RequestHandler as RequestHandler
from ._transport import TopicHandler as TopicHandler
from ._transport import Transport as Transport
from ._work_queue import DeadJob as DeadJob
from ._work_queue import QueuedJob as QueuedJob
from ._work_queue import WorkQueueBacking as WorkQueueBacking
from ._work_queue import WorkQueueBackingProvider as WorkQueueBackingProvider
from ._work_queue import WorkQueueCounts as WorkQueueCounts
from ._work_queue import WorkQueueSpec as WorkQueueSpec
from ._work_queue import decode_value as decode_value
from ._work_queue import encode_value as encode_value

__all__ = [
    "Consistency",
    "Coordination",
    "DeadJob",
    "Lease",
    "LogEntry",
    "NodeInfo",
    "QueuedJob",
    "Registry",
    "RegistryEntry",
    "RegistryEvent",
    "RequestHandler",
    "StateBackend",
    "TopicHandler",
    "Transport",
    "Versioned",
    "WorkQueueBacking",
    "WorkQueueBackingProvider",
    "WorkQueueCounts",
    "WorkQueueSpec",
    "decode_value",
    "encode_value",
]
