"""The plugin manager: default plugins, entry points, blocking, selection by name."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import attrs
import pluggy

from . import hookspecs
from ._config import Config
from ._exceptions import ConfigError

__all__ = [
    "BLOCK_ENV",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "Backends",
    "make_plugin_manager",
]

log = logging.getLogger("jido_trio.plugins")

#: Entry-point group that third-party plugins register under.
ENTRY_POINT_GROUP = "jido_trio"
#: Comma-separated plugin names that must not be registered.
BLOCK_ENV = "JIDO_TRIO_BLOCK_PLUGINS"
#: When set to a true value, entry-point plugins are not loaded automatically.
DISABLE_AUTOLOAD_ENV = "JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD"

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


def _blocked(environ: Mapping[str, str]) -> set[str]:
    return {n.strip() for n in environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def make_plugin_manager(
    extra: Iterable[object] = (), *, environ: Mapping[str, str] | None = None
) -> pluggy.PluginManager:
    """Build a plugin manager with the default plugins, entry-point plugins
    (unless autoloading is disabled) and ``extra`` plugins, minus blocked names."""
    from .local import plugin as local_plugin

    env = os.environ if environ is None else environ
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in _blocked(env):
        pm.set_blocked(name)
    if not pm.is_blocked("local"):
        pm.register(local_plugin, name="local")
    if env.get(DISABLE_AUTOLOAD_ENV, "").lower() not in ("1", "true", "yes"):
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        name = pm.get_canonical_name(plugin)
        if pm.is_blocked(name) or pm.is_registered(plugin):
            continue
        pm.register(plugin)
    return pm


def collect_backends(pm: pluggy.PluginManager) -> Backends:
    """Ask every plugin for its implementation factories."""
    backends = Backends()
    pm.hook.jido_trio_add_backends(backends=backends)
    return backends
