"""What ``jido_trio_add_backends`` receives: implementation factories by protocol and name.

Its own module so that :mod:`jido_trio.hookspecs` (which names it) and the
plugin manager (which fills it) both import it, not each other.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import Generic
from typing import TypeVar

import attrs

from ._config import Config
from ._exceptions import ConfigError

__all__ = ["Backends", "Factory"]

T = TypeVar("T")
Factory = Callable[[Config, Mapping[str, Any]], Any]


@attrs.define(eq=False)
class _Kind(Generic[T]):
    label: str
    factories: dict[str, Factory] = attrs.field(factory=dict)

    def add(self, name: str, factory: Factory) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.label} implementation name must be a non-empty string")
        if not callable(factory):
            raise ConfigError(f"{self.label} factory for {name!r} is not callable")
        # Hooks run newest-registered first, defaults (trylast) last: the first
        # name claimed wins so a third party can replace a default.
        self.factories.setdefault(name, factory)

    def get(self, name: str) -> Factory:
        try:
            return self.factories[name]
        except KeyError:
            available = ", ".join(sorted(self.factories)) or "none"
            raise ConfigError(
                f"unknown {self.label} implementation {name!r}; available: {available}"
            ) from None


@attrs.define(eq=False)
class Backends:
    """Factories registered by plugins, by protocol and name.

    Passed to ``jido_trio_add_backends``; a factory takes ``(config, options)``.
    """

    registry: _Kind[Any] = attrs.field(factory=lambda: _Kind("registry"))
    transport: _Kind[Any] = attrs.field(factory=lambda: _Kind("transport"))
    state: _Kind[Any] = attrs.field(factory=lambda: _Kind("state"))
    coordination: _Kind[Any] = attrs.field(factory=lambda: _Kind("coordination"))

    def add_registry(self, name: str, factory: Factory) -> None:
        """Register a :class:`~jido_trio.abc.Registry` factory under ``name``."""
        self.registry.add(name, factory)

    def add_transport(self, name: str, factory: Factory) -> None:
        """Register a :class:`~jido_trio.abc.Transport` factory under ``name``."""
        self.transport.add(name, factory)

    def add_state(self, name: str, factory: Factory) -> None:
        """Register a :class:`~jido_trio.abc.StateBackend` factory under ``name``."""
        self.state.add(name, factory)

    def add_coordination(self, name: str, factory: Factory) -> None:
        """Register a :class:`~jido_trio.abc.Coordination` factory under ``name``."""
        self.coordination.add(name, factory)

    def names(self) -> dict[str, list[str]]:
        """The registered names per protocol."""
        return {
            kind.label: sorted(kind.factories)
            for kind in (self.registry, self.transport, self.state, self.coordination)
        }
