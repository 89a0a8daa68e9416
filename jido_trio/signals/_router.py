"""Route signals to targets by type pattern.

A signal type is split on ``"."`` into segments (``"order.created"`` is
``["order", "created"]``). A pattern is split the same way, and each of its
segments is

* a literal, which matches the same segment exactly;
* ``*``, which matches exactly one segment (any text, even an empty one);
* ``**``, which matches any number of segments, including none
  (``"order.**"`` matches ``"order"``, ``"order.created"`` and
  ``"order.line.added"``).

``*`` and ``**`` only stand alone: ``"a*"`` or ``"a.**b"`` are refused, and so
are empty segments (``"a..b"``, ``".a"``).

:class:`SignalRouter` keeps the patterns in a segment trie, so matching costs
one walk over the trie (bounded by trie nodes times type segments), not one
test per route, and remembers the result per type until the routes change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from typing import Generic
from typing import TypeVar

import attrs

from ._signal import Signal

__all__ = ["RouteHandle", "SignalFilter", "SignalRouter", "pattern_matches", "validate_pattern"]

T = TypeVar("T")

#: A route's filter: called with the signal, the route applies if it returns true.
SignalFilter = Callable[[Signal], bool]

_STAR: Final = "*"
_GLOBSTAR: Final = "**"
_CACHE_SIZE: Final = 1024


def _split_pattern(pattern: str) -> list[str]:
    if not isinstance(pattern, str):
        raise TypeError(f"a signal pattern must be a string, not {type(pattern).__name__}")
    if not pattern:
        raise ValueError("a signal pattern must not be empty")
    segments: list[str] = []
    for segment in pattern.split("."):
        if not segment:
            raise ValueError(f"signal pattern {pattern!r} has an empty segment")
        if "*" in segment and segment not in (_STAR, _GLOBSTAR):
            raise ValueError(
                f"signal pattern {pattern!r}: '*' and '**' must be whole segments, "
                f"not part of {segment!r}"
            )
        # "**.**" means the same as "**": keep one, so the trie stays small.
        if segment == _GLOBSTAR and segments and segments[-1] == _GLOBSTAR:
            continue
        segments.append(segment)
    return segments


def _split_type(signal_type: str) -> list[str]:
    if not isinstance(signal_type, str):
        raise TypeError(f"a signal type must be a string, not {type(signal_type).__name__}")
    if not signal_type:
        raise ValueError("a signal type must not be empty")
    return signal_type.split(".")


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid signal pattern, else raise :class:`ValueError`."""
    _split_pattern(pattern)
    return pattern


def pattern_matches(pattern: str, signal_type: str) -> bool:
    """Whether one pattern matches one signal type (no router needed)."""
    segments = _split_pattern(pattern)
    parts = _split_type(signal_type)
    # Classic glob matching over segments with one backtrack point per "**".
    p = t = 0
    star_p = star_t = -1
    while t < len(parts):
        if p < len(segments) and segments[p] == _GLOBSTAR:
            star_p, star_t = p, t
            p += 1
        elif p < len(segments) and segments[p] in (_STAR, parts[t]):
            p += 1
            t += 1
        elif star_p >= 0:
            star_t += 1
            p, t = star_p + 1, star_t
        else:
            return False
    while p < len(segments) and segments[p] == _GLOBSTAR:
        p += 1
    return p == len(segments)


@attrs.frozen(eq=False)
class RouteHandle:
    """What :meth:`SignalRouter.add` returns; give it to :meth:`SignalRouter.remove`.

    Handles compare by identity. ``pattern`` and ``priority`` are as given to ``add``.
    """

    pattern: str
    priority: int


@attrs.define(eq=False)
class _Route(Generic[T]):
    handle: RouteHandle
    target: T
    filter: SignalFilter | None
    seq: int


@attrs.define(eq=False)
class _Node(Generic[T]):
    children: dict[str, _Node[T]] = attrs.Factory(dict)
    star: _Node[T] | None = None
    globstar: _Node[T] | None = None
    # True for the node reached through a "**": it may swallow more segments.
    is_globstar: bool = False
    routes: list[_Route[T]] = attrs.Factory(list)

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.globstar or self.routes)


@attrs.define(eq=False)
class SignalRouter(Generic[T]):
    """Maps signal type patterns to targets of type ``T``.

    ``match`` returns the targets of every route whose pattern matches, highest
    ``priority`` first and, within a priority, in the order they were added. A
    target added under several routes appears once per matching route.
    """

    _root: _Node[T] = attrs.field(init=False, factory=_Node)
    _routes: dict[RouteHandle, tuple[_Route[T], list[str]]] = attrs.field(init=False, factory=dict)
    _seq: int = attrs.field(init=False, default=0)
    _cache: dict[str, tuple[_Route[T], ...]] = attrs.field(init=False, factory=dict)

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, handle: object) -> bool:
        return handle in self._routes

    def add(
        self,
        pattern: str,
        target: T,
        *,
        priority: int = 0,
        filter: SignalFilter | None = None,
    ) -> RouteHandle:
        """Route signals whose type matches ``pattern`` to ``target``.

        :param priority: higher runs first; equal priorities keep insertion order.
        :param filter: if given, the route applies to a :class:`Signal` only when
            ``filter(signal)`` is true (not consulted when matching a bare type).
        :raises ValueError: for an invalid pattern.
        """
        segments = _split_pattern(pattern)
        if type(priority) is not int:
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if filter is not None and not callable(filter):
            raise TypeError("filter must be callable or None")
        handle = RouteHandle(pattern, priority)
        route = _Route(handle, target, filter, self._seq)
        self._seq += 1
        node = self._root
        for segment in segments:
            node = self._child(node, segment)
        node.routes.append(route)
        self._routes[handle] = (route, segments)
        self._cache.clear()
        return handle

    def remove(self, handle: RouteHandle) -> bool:
        """Remove a route; ``False`` if this router does not have it (any more)."""
        entry = self._routes.pop(handle, None)
        if entry is None:
            return False
        route, segments = entry
        path: list[tuple[_Node[T], str]] = []
        node = self._root
        for segment in segments:
            path.append((node, segment))
            child = self._get_child(node, segment)
            assert child is not None
            node = child
        node.routes.remove(route)
        # Prune nodes left without routes or children.
        for parent, segment in reversed(path):
            if not node.is_empty():
                break
            self._drop_child(parent, segment)
            node = parent
        self._cache.clear()
        return True

    def match(
        self,
        signal: Signal | str,
        *,
        on_filter_error: Callable[[T, Exception], object] | None = None,
    ) -> list[T]:
        """Targets of the routes matching a signal (or a bare signal type).

        Ordered by priority (higher first), then insertion order. Given a
        :class:`Signal`, routes whose filter rejects it are skipped; a filter
        that raises propagates, unless ``on_filter_error`` is given: then that
        route is skipped and ``on_filter_error(target, exception)`` called.
        """
        if not isinstance(signal, Signal):
            return [r.target for r in self._lookup(signal)]
        routes = self._lookup(signal.type)
        if on_filter_error is None:
            return [r.target for r in routes if r.filter is None or r.filter(signal)]
        matched: list[T] = []
        for route in routes:
            if route.filter is not None:
                try:
                    if not route.filter(signal):
                        continue
                except Exception as exc:
                    on_filter_error(route.target, exc)
                    continue
            matched.append(route.target)
        return matched

    def clear(self) -> None:
        """Remove every route."""
        self._root = _Node()
        self._routes.clear()
        self._cache.clear()

    # -- internals --------------------------------------------------------------

    def _lookup(self, signal_type: str) -> tuple[_Route[T], ...]:
        cached = self._cache.get(signal_type)
        if cached is not None:
            return cached
        parts = _split_type(signal_type)
        found = self._walk(parts)
        found.sort(key=lambda route: (-route.handle.priority, route.seq))
        result = tuple(found)
        if len(self._cache) >= _CACHE_SIZE:
            del self._cache[next(iter(self._cache))]
        self._cache[signal_type] = result
        return result

    def _walk(self, parts: list[str]) -> list[_Route[T]]:
        # Depth-first over (node, position) states; each state is visited once,
        # so "**" chains cannot blow up and no route is found twice.
        end = len(parts)
        found: list[_Route[T]] = []
        seen: set[tuple[int, int]] = set()
        stack: list[tuple[_Node[T], int]] = [(self._root, 0)]
        while stack:
            node, pos = stack.pop()
            key = (id(node), pos)
            if key in seen:
                continue
            seen.add(key)
            if node.globstar is not None:
                stack.append((node.globstar, pos))
            if pos == end:
                found.extend(node.routes)
                continue
            if node.is_globstar:
                stack.append((node, pos + 1))
            child = node.children.get(parts[pos])
            if child is not None:
                stack.append((child, pos + 1))
            if node.star is not None:
                stack.append((node.star, pos + 1))
        return found

    @staticmethod
    def _get_child(node: _Node[T], segment: str) -> _Node[T] | None:
        if segment == _GLOBSTAR:
            return node.globstar
        if segment == _STAR:
            return node.star
        return node.children.get(segment)

    @staticmethod
    def _child(node: _Node[T], segment: str) -> _Node[T]:
        if segment == _GLOBSTAR:
            if node.globstar is None:
                node.globstar = _Node(is_globstar=True)
            return node.globstar
        if segment == _STAR:
            if node.star is None:
                node.star = _Node()
            return node.star
        child = node.children.get(segment)
        if child is None:
            child = node.children[segment] = _Node()
        return child

    @staticmethod
    def _drop_child(node: _Node[T], segment: str) -> None:
        if segment == _GLOBSTAR:
            node.globstar = None
        elif segment == _STAR:
            node.star = None
        else:
            del node.children[segment]
