"""The plugin manager: default plugins, entry points, blocking, selection by name."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from collections.abc import Mapping

import pluggy

from . import hookspecs
from ._backends import Backends

__all__ = [
    "BLOCK_ENV",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "Backends",
    "collect_backends",
    "make_plugin_manager",
]

log = logging.getLogger("jido_trio.plugins")

#: Entry-point group that third-party plugins register under.
ENTRY_POINT_GROUP = "jido_trio"
#: Comma-separated plugin names that must not be registered.
BLOCK_ENV = "JIDO_TRIO_BLOCK_PLUGINS"
#: When set to a true value, entry-point plugins are not loaded automatically.
DISABLE_AUTOLOAD_ENV = "JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD"


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
