"""Storage plans: a sequence of StateBackend operations written once, run
synchronously or awaited.

A plan is a generator that yields the operations it needs, one at a time,
and receives each one's result:

- ``("read", key)`` -> :class:`~jido_trio.abc.Versioned` or ``None``;
- ``("write", key, value, expected_version)`` -> the new version;
- ``("delete", key)`` -> ``None``.

:func:`run_nowait` runs it against a backend's
:class:`~jido_trio.abc.SynchronousState` (no scheduler round, no cancel
point), :func:`run` against the async :class:`~jido_trio.abc.StateBackend`.
So loading and committing an agent's state are each written once, whichever
way the node's backend is reached. An error from an operation propagates to
the caller of the driver; the plan is abandoned where it stood.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

from ..abc import StateBackend, SynchronousState

__all__ = ["Op", "Plan", "run", "run_nowait"]

T = TypeVar("T")

#: One operation of a plan (see the module docstring).
Op = tuple[Any, ...]
#: A plan returning ``T``.
Plan = Generator[Op, Any, T]


def run_nowait(plan: Plan[T], access: SynchronousState) -> T:
    """Run ``plan`` to its end without waiting; return what it returns."""
    result: Any = None
    try:
        while True:
            op = plan.send(result)
            kind = op[0]
            if kind == "write":
                result = access.write_nowait(op[1], op[2], expected_version=op[3])
            elif kind == "read":
                result = access.read_nowait(op[1])
            else:
                access.delete_nowait(op[1])
                result = None
    except StopIteration as done:
        value: T = done.value
        return value


async def run(plan: Plan[T], backend: StateBackend) -> T:
    """Run ``plan`` to its end, awaiting each operation; return what it returns."""
    result: Any = None
    try:
        while True:
            op = plan.send(result)
            kind = op[0]
            if kind == "write":
                result = await backend.write(op[1], op[2], expected_version=op[3])
            elif kind == "read":
                result = await backend.read(op[1], consistency="strong")
            else:
                await backend.delete(op[1])
                result = None
    except StopIteration as done:
        value: T = done.value
        return value
