"""Conformance suites for the four protocols and the work-queue backing, for plugin authors.

Each ``check_*`` function runs a battery of behaviour checks against your
implementation (a fresh instance per check, built by the factory you pass)
and raises :class:`AssertionError` naming the first check that failed and
why, like trio's ``check_two_way_stream``. With pytest and pytest-trio
(``trio_mode = true``)::

    from jido_trio.testing.conformance import (
        check_coordination, check_registry, check_state_backend, check_transport,
        plugin_factory,
    )
    from my_plugin import open_my_state          # async context manager factory


    async def test_state_backend(tmp_path):
        n = iter(range(1_000_000))
        await check_state_backend(lambda: open_my_state(tmp_path / f"{next(n)}.db"))


    async def test_registry():
        # by name, exactly as open_node would build it (entry points included)
        await check_registry(plugin_factory("registry", "mine", options={"url": "..."}))


    async def test_transport():
        # factory(node_name) -> an endpoint; all endpoints must reach each other
        await check_transport(plugin_factory("transport", "mine", options={"hub": "t"}))


    async def test_coordination():   # a networked engine: real clock, small ttl
        await check_coordination(plugin_factory("coordination", "mine"), ttl=0.5)


    async def test_work_queue_backing():
        # a state engine that offers a work-queue backing: factory(spec) -> backing
        async with plugin_factory("state", "mine")() as state:
            await check_work_queue_backing(state.open_work_queue_backing)

What a factory may return: an async context manager yielding the
implementation (for anything that owns resources), an awaitable of it, or the
implementation itself. It must be a subclass of the matching
:mod:`jido_trio.abc` class and start empty: no keys, no registrations.

Every bound is measured with ``trio.current_time()``. An engine that waits
only on Trio primitives may run under an autojump ``MockClock`` (pytest-trio's
``autojump_clock`` fixture) and takes no real time; an engine that waits on
threads or sockets must run on the real clock with small durations: under an
autojump clock virtual time jumps while it waits and its own timeouts fire.

- :func:`check_state_backend` and :func:`check_registry` need no special
  clock; ``timeout`` bounds how long relaxed reads may take to see a write
  and how long a watch event may take.
- :func:`check_coordination` waits for leases to expire with ``trio.sleep``;
  every duration is a multiple of its ``ttl`` argument (a networked engine:
  ``ttl=0.5`` on the real clock). A waiter must get a released lock within
  one ``ttl``.
- :func:`check_transport` calls ``factory(node_name)`` for each endpoint,
  with names unique to each check (so endpoints of a shared server do not
  collide). In-process transports are fastest under an autojump clock; a
  transport on a real network needs the real clock (``timeout``, ``settle``).
  ``partition=`` (optional) cuts two endpoints apart, to check what
  ``members()`` shows across a partition. A transport whose
  ``supports_remote`` is false is only checked to raise
  :class:`~jido_trio.RemoteNotSupported`.
- :func:`check_work_queue_backing` calls ``factory(spec)`` with a
  :class:`~jido_trio.abc.WorkQueueSpec` whose queue name is new for each
  check (one store serves them all), and again with the same spec to check
  what survives a close. A backing on a real network needs the real clock
  (``delay``, ``timeout``); one that works in memory also runs under an
  autojump clock.

Every suite takes ``skip=`` (check names, listed in :data:`STATE_BACKEND_CHECKS`,
:data:`REGISTRY_CHECKS`, :data:`TRANSPORT_CHECKS`, :data:`COORDINATION_CHECKS`,
:data:`WORK_QUEUE_BACKING_CHECKS`) for a documented deviation; an unknown name
is a :class:`ValueError`.
"""

from __future__ import annotations

from ._conformance_common import plugin_factory as plugin_factory
from ._conformance_coordination import COORDINATION_SUITE
from ._conformance_coordination import check_coordination as check_coordination
from ._conformance_registry import REGISTRY_SUITE
from ._conformance_registry import check_registry as check_registry
from ._conformance_state import STATE_SUITE
from ._conformance_state import check_state_backend as check_state_backend
from ._conformance_transport import TRANSPORT_SUITE
from ._conformance_transport import check_transport as check_transport
from ._conformance_work_queue import WORK_QUEUE_SUITE
from ._conformance_work_queue import check_work_queue_backing as check_work_queue_backing

__all__ = [
    "COORDINATION_CHECKS",
    "REGISTRY_CHECKS",
    "STATE_BACKEND_CHECKS",
    "TRANSPORT_CHECKS",
    "WORK_QUEUE_BACKING_CHECKS",
    "check_coordination",
    "check_registry",
    "check_state_backend",
    "check_transport",
    "check_work_queue_backing",
    "plugin_factory",
]

#: Names of the checks :func:`check_state_backend` runs, in order.
STATE_BACKEND_CHECKS: tuple[str, ...] = STATE_SUITE.names
#: Names of the checks :func:`check_registry` runs, in order.
REGISTRY_CHECKS: tuple[str, ...] = REGISTRY_SUITE.names
#: Names of the checks :func:`check_transport` runs, in order.
TRANSPORT_CHECKS: tuple[str, ...] = TRANSPORT_SUITE.names
#: Names of the checks :func:`check_coordination` runs, in order.
COORDINATION_CHECKS: tuple[str, ...] = COORDINATION_SUITE.names
#: Names of the checks :func:`check_work_queue_backing` runs, in order.
WORK_QUEUE_BACKING_CHECKS: tuple[str, ...] = WORK_QUEUE_SUITE.names
