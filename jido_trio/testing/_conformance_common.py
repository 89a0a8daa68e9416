"""Shared machinery of the conformance suites: factories, the runner, asserts."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from contextlib import asynccontextmanager
from contextlib import contextmanager
from typing import Any
from typing import TypeVar

import attrs
import trio
import trio.testing

__all__ = [
    "Check",
    "Suite",
    "check",
    "expect_checkpoint",
    "opened",
    "plugin_factory",
    "raises",
]

T = TypeVar("T")
CheckFn = Callable[..., Awaitable[None]]


# ---------------------------------------------------------------- asserts


def check(condition: object, message: str) -> None:
    """Raise :class:`AssertionError` with ``message`` unless ``condition`` holds.

    (Plain ``assert`` would vanish under ``python -O`` and is not rewritten by
    pytest outside test modules.)
    """
    if not condition:
        raise AssertionError(message)


def _names(types: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__


@contextmanager
def raises(
    types: type[BaseException] | tuple[type[BaseException], ...], what: str
) -> Iterator[list[BaseException]]:
    """Require the block to raise one of ``types``; the exception is put in the
    yielded list so the caller can look at it."""
    caught: list[BaseException] = []
    try:
        yield caught
    except types as exc:
        caught.append(exc)
        return
    except Exception as exc:
        raise AssertionError(
            f"{what}: expected {_names(types)}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"{what}: expected {_names(types)}, but nothing was raised")


@contextmanager
def expect_checkpoint(what: str) -> Iterator[None]:
    """Require the block to execute a Trio checkpoint (schedule point and cancel
    point), as every public ``async def`` must."""
    try:
        with trio.testing.assert_checkpoints():
            yield
    except AssertionError:
        raise AssertionError(f"{what} is not a Trio checkpoint") from None


# ---------------------------------------------------------------- factories


@asynccontextmanager
async def opened(made: Any) -> AsyncIterator[Any]:
    """Enter what a factory returned: an async context manager, an awaitable,
    or the implementation itself."""
    if isinstance(made, AbstractAsyncContextManager):
        async with made as value:
            yield value
        return
    if inspect.isawaitable(made):
        made = await made
    yield made


@asynccontextmanager
async def opened_block(made: Any) -> AsyncIterator[Any]:
    """Enter a context manager a caller's hook returned, sync or async."""
    if isinstance(made, AbstractAsyncContextManager):
        async with made as value:
            yield value
        return
    with made as value:
        yield value


@asynccontextmanager
async def opened_engine(factory: Callable[[], Any], protocol: type) -> AsyncIterator[Any]:
    """Open one engine from a conformance suite's ``factory`` and check that it
    implements ``protocol``."""
    async with opened(factory()) as engine:
        check(
            isinstance(engine, protocol),
            f"the factory made a {type(engine).__name__}, not a jido_trio.abc.{protocol.__name__}",
        )
        yield engine


def plugin_factory(
    kind: str,
    name: str,
    *,
    options: Mapping[str, Any] | None = None,
    plugins: Collection[object] = (),
    **config_fields: Any,
) -> Callable[..., Any]:
    """A factory for :mod:`jido_trio.testing.conformance` that builds the
    implementation ``name`` of protocol ``kind`` exactly as ``open_node`` would:
    from the registered plugins (defaults, entry points and ``plugins``),
    called with a :class:`~jido_trio.Config` and ``options``.

    The returned callable takes an optional node name (the transport suite
    passes one per endpoint).

    :param kind: ``"registry"``, ``"transport"``, ``"state"`` or ``"coordination"``.
    :param name: the implementation name (as in ``Config``).
    :param options: the plugin options (``plugin_options[name]``).
    :param plugins: extra plugin objects, as in ``open_node(plugins=...)``.
    :param config_fields: other :class:`~jido_trio.Config` fields.
    :raises ConfigError: unknown ``kind`` or ``name``.
    """
    from .._config import Config
    from .._exceptions import ConfigError
    from .._plugins import collect_backends
    from .._plugins import make_plugin_manager

    kinds = ("registry", "transport", "state", "coordination")
    if kind not in kinds:
        raise ConfigError(f"kind must be one of {', '.join(kinds)}, got {kind!r}")
    backends = collect_backends(make_plugin_manager(plugins))
    factory = getattr(backends, kind).get(name)
    plugin_options = {name: dict(options or {})}

    def make(node_name: str = "conformance") -> Any:
        fields: dict[str, Any] = {**config_fields, kind: name}
        config = Config(node_name=node_name, plugin_options=plugin_options, **fields)
        return factory(config, config.plugin_options.get(name, {}))

    return make


# ---------------------------------------------------------------- the runner


@attrs.frozen
class Check:
    """One named behaviour check of a suite."""

    name: str
    fn: CheckFn
    doc: str


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    if isinstance(exc, AssertionError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


@attrs.define(eq=False)
class Suite:
    """The checks of one protocol, in the order they run."""

    label: str
    checks: list[Check] = attrs.field(factory=list)

    def register(self, fn: CheckFn) -> CheckFn:
        name = fn.__name__.lstrip("_").split("_", 1)[1]  # "_state_read_absent" -> "read_absent"
        self.checks.append(Check(name=name, fn=fn, doc=inspect.getdoc(fn) or ""))
        return fn

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks)

    def selected(self, skip: Collection[str]) -> list[Check]:
        unknown = sorted(set(skip) - set(self.names))
        if unknown:
            raise ValueError(
                f"unknown {self.label} check(s) to skip: {', '.join(unknown)}; "
                f"known: {', '.join(self.names)}"
            )
        return [c for c in self.checks if c.name not in skip]

    async def run(self, skip: Collection[str], run_one: Callable[[Check], Awaitable[None]]) -> None:
        for item in self.selected(skip):
            try:
                await run_one(item)
            except Exception as exc:
                raise AssertionError(
                    f"{self.label} conformance check {item.name!r} failed "
                    f"({item.doc.splitlines()[0] if item.doc else 'no description'}): "
                    f"{_describe(exc)}"
                ) from exc
