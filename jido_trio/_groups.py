"""Unwrapping the exception groups of context managers that own a nursery."""

from __future__ import annotations

import trio

__all__ = ["exception_leaves", "single_failure"]


def exception_leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every exception inside ``group`` that is not a group itself, nested
    groups flattened, in order."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(exception_leaves(exc))
        else:
            found.append(exc)
    return found


def single_failure(
    group: BaseExceptionGroup[BaseException], body_error: BaseException | None = None
) -> BaseException | None:
    """The one real failure inside ``group`` (its only exception other than
    :class:`trio.Cancelled`, nested groups flattened), or ``None`` when the
    group must propagate as it is.

    For an ``async with`` whose nursery wraps what crosses it: callers then
    see that error itself rather than a group around it. ``body_error`` is
    what the body raised, when the context manager caught it outside the
    group: a body that failed on its own (with anything but a cancellation)
    keeps the group, so neither failure is hidden.

    ::

        try:
            async with trio.open_nursery() as nursery:
                ...
                yield resource
        except BaseExceptionGroup as group:
            failure = single_failure(group)
            if failure is None:
                raise
            raise failure from None
    """
    leaves = [e for e in exception_leaves(group) if not isinstance(e, trio.Cancelled)]
    body_cancelled = body_error is None or isinstance(body_error, trio.Cancelled)
    if body_cancelled and len(leaves) == 1:
        return leaves[0]
    return None
