"""The four protocols between the runtime and its engines.

A plugin implements any of :class:`Registry`, :class:`Transport`,
:class:`StateBackend` and :class:`Coordination` and registers a factory for it
by name through the ``jido_trio_add_backends`` hook (see
:mod:`jido_trio.hookspecs`). Every method is ``async`` and is a Trio
checkpoint. Implementations that own resources (connections, threads, tasks)
are returned by their factory as async context managers; the node enters them
in order (state, registry, coordination, transport) and exits them in reverse.

Errors each method may raise are named in its docstring; implementations must
not raise anything else for the outcomes described there. Besides its own
outcomes, a method of an engine that talks to a server or to storage raises

- :class:`~jido_trio.Unreachable` when the engine cannot be reached right now
  (a lost connection, a file locked by another process): it passes, and
  callers may retry;
- :class:`~jido_trio.EngineError` when the engine was reached and failed the
  operation (an I/O error, a corrupt file, an error answer from its server),
  with the engine's own exception as ``__cause__``;
- :class:`~jido_trio.CallTimeout` when its server gave no answer in time.

Bad arguments are programming errors, not :class:`~jido_trio.JidoError`: a
wrong type raises :class:`TypeError`, a value out of range :class:`ValueError`.

For engine authors, this package also holds what every engine does the same
way: the argument checks (:func:`check_state_key`, :func:`check_state_value`,
:func:`check_expected_version`, :func:`check_consistency`,
:func:`check_log_seq`, :func:`check_log_limit`, :func:`check_registered_ref`,
:func:`check_ttl`, :func:`check_parties`),
the matching of :meth:`Registry.select` (:func:`registry_matcher`), and
:func:`single_failure` for factories that own a nursery.
"""

from __future__ import annotations

from .._groups import single_failure as single_failure
from ._coordination import Coordination as Coordination
from ._coordination import Lease as Lease
from ._registry import Metadata as Metadata
from ._registry import Registry as Registry
from ._registry import RegistryEntry as RegistryEntry
from ._registry import RegistryEvent as RegistryEvent
from ._rules import check_consistency as check_consistency
from ._rules import check_expected_version as check_expected_version
from ._rules import check_log_limit as check_log_limit
from ._rules import check_log_seq as check_log_seq
from ._rules import check_option_keys as check_option_keys
from ._rules import check_parties as check_parties
from ._rules import check_registered_ref as check_registered_ref
from ._rules import check_state_key as check_state_key
from ._rules import check_state_value as check_state_value
from ._rules import check_ttl as check_ttl
from ._rules import registry_matcher as registry_matcher
from ._state import Consistency as Consistency
from ._state import LogEntry as LogEntry
from ._state import StateBackend as StateBackend
from ._state import Versioned as Versioned
from ._synchronous import SynchronousRegistry as SynchronousRegistry
from ._synchronous import SynchronousState as SynchronousState
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
    "Metadata",
    "NodeInfo",
    "QueuedJob",
    "Registry",
    "RegistryEntry",
    "RegistryEvent",
    "RequestHandler",
    "StateBackend",
    "SynchronousRegistry",
    "SynchronousState",
    "TopicHandler",
    "Transport",
    "Versioned",
    "WorkQueueBacking",
    "WorkQueueBackingProvider",
    "WorkQueueCounts",
    "WorkQueueSpec",
    "check_consistency",
    "check_expected_version",
    "check_log_limit",
    "check_log_seq",
    "check_option_keys",
    "check_parties",
    "check_registered_ref",
    "check_state_key",
    "check_state_value",
    "check_ttl",
    "decode_value",
    "encode_value",
    "registry_matcher",
    "single_failure",
]
