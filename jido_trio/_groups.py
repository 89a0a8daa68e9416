"""Unwrapping the exception groups of context managers that own a nursery."""

from __future__ import annotations

import trio

__all__ = ["single_failure"]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def single_failure(
    group: BaseExceptionGroup[BaseException], body_error: BaseException | None
) -> BaseException | None:
    """The one real failure inside ``group``, when the ``async with`` body did
    not fail on its own (it raised nothing, or was only cancelled by that
    failure): callers then see that error itself rather than a group around it.
    ``None`` when the group must propagate as it is."""
    leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
    body_cancelled = body_error is None or isinstance(body_error, trio.Cancelled)
    if body_cancelled and len(leaves) == 1:
        return leaves[0]
    return None
