"""Node configuration: one frozen value, loadable from TOML or the environment."""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from typing import Literal

import attrs

from ._exceptions import ConfigError

__all__ = ["Config", "Mode"]

Mode = Literal["local", "datacenter", "global"]
_MODES = ("local", "datacenter", "global")
ENV_PREFIX = "JIDO_TRIO_"


def _default_node_name() -> str:
    return f"node-{uuid.uuid4().hex[:8]}"


def _freeze_options(value: Mapping[str, Mapping[str, Any]] | None) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigError("plugin_options must be a mapping of plugin name to options")
    frozen: dict[str, Mapping[str, Any]] = {}
    for name, options in value.items():
        if not isinstance(name, str) or not isinstance(options, Mapping):
            raise ConfigError(f"plugin_options[{name!r}] must be a mapping")
        frozen[name] = MappingProxyType(dict(options))
    return MappingProxyType(frozen)


def _positive(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{attribute.name} must be a positive number, got {value!r}")


def _positive_int(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{attribute.name} must be a positive integer, got {value!r}")


def _ratio(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(
            f"{attribute.name} must be a fraction of the mailbox above 0 and at most 1, "
            f"got {value!r}"
        )


def _flag(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be true or false, got {value!r}")


def _name(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _mode(_inst: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in _MODES:
        raise ConfigError(f"mode must be one of {', '.join(_MODES)}; got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    """Everything a node needs to know; every field has a local default.

    Implementations are chosen by name (``registry``, ``transport``, ``state``,
    ``coordination``) among those that plugins register; ``plugin_options[name]``
    is handed to the implementation of that name. Distributed settings are
    accepted in every mode, so one file can move from local to a cluster.

    :param node_name: this node's name; unique in a cluster.
    :param mode: ``"local"``, ``"datacenter"`` or ``"global"`` (informational
        for plugins; the API is the same in all three).
    :param registry: registry implementation name (default ``"local"``).
    :param transport: transport implementation name (default ``"local"``).
    :param state: state backend name: ``"memory"`` or ``"sqlite"``.
    :param coordination: coordination implementation name (default ``"local"``).
    :param operation_timeout: default deadline in seconds of every operation.
    :param health_check_interval: seconds between heartbeats to every other node.
    :param failure_detection_threshold: missed heartbeats before a node is
        considered unreachable.
    :param mailbox_size: capacity of each agent's bounded mailbox.
    :param mailbox_high_water: mailbox fill ratio (above 0, at most 1) above which an agent is
        reported ``DEGRADED``.
    :param dedupe_window: processed instruction ids remembered per agent
        (at least this many most recent ids are kept).
    :param max_delivery_attempts: times an at-least-once message is delivered
        to an agent that crashes on it before it is dead-lettered.
    :param retry_attempts: attempts (first included) of idempotent operations
        on other nodes (``send_instruction``, ``query_agent``) that fail with
        :class:`Unreachable` or :class:`CallTimeout`; ``call`` is never retried.
    :param breaker_failure_threshold: consecutive failures (unreachable node,
        call timeout) to one agent that open its circuit breaker.
    :param breaker_reset_timeout: seconds an open breaker refuses calls before
        it lets one trial call through (half-open).
    :param slow_call_threshold: seconds; an agent whose average call latency
        is above this is reported ``DEGRADED``.
    :param max_restarts: restart intensity of the node's root supervisor ...
    :param max_seconds: ... within this many seconds.
    :param shutdown_timeout: seconds an agent gets to stop gracefully.
    :param plugin_options: per-plugin option mappings, keyed by implementation name.
    :param failover: with a transport that reaches other nodes, restart the
        agents of a node that left the cluster without stopping them (a crash)
        on the surviving nodes, with their ids and last state (see
        :doc:`the distributed guide </distributed>`).
    """

    node_name: str = attrs.field(factory=_default_node_name, validator=_name)
    mode: Mode = attrs.field(default="local", validator=_mode)
    registry: str = attrs.field(default="local", validator=_name)
    transport: str = attrs.field(default="local", validator=_name)
    state: str = attrs.field(default="memory", validator=_name)
    coordination: str = attrs.field(default="local", validator=_name)
    operation_timeout: float = attrs.field(default=5.0, validator=_positive)
    health_check_interval: float = attrs.field(default=1.0, validator=_positive)
    failure_detection_threshold: int = attrs.field(default=3, validator=_positive_int)
    mailbox_size: int = attrs.field(default=1024, validator=_positive_int)
    mailbox_high_water: float = attrs.field(default=0.8, validator=_ratio)
    dedupe_window: int = attrs.field(default=10_000, validator=_positive_int)
    max_delivery_attempts: int = attrs.field(default=3, validator=_positive_int)
    retry_attempts: int = attrs.field(default=3, validator=_positive_int)
    breaker_failure_threshold: int = attrs.field(default=5, validator=_positive_int)
    breaker_reset_timeout: float = attrs.field(default=30.0, validator=_positive)
    slow_call_threshold: float = attrs.field(default=1.0, validator=_positive)
    max_restarts: int = attrs.field(default=3, validator=_positive_int)
    max_seconds: float = attrs.field(default=5.0, validator=_positive)
    shutdown_timeout: float = attrs.field(default=5.0, validator=_positive)
    plugin_options: Mapping[str, Mapping[str, Any]] = attrs.field(
        default=None, converter=_freeze_options
    )
    failover: bool = attrs.field(default=True, validator=_flag)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Config:
        """Build a config from a plain mapping; unknown keys are a :class:`ConfigError`."""
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Config:
        """Load a config from a TOML file.

        Keys may sit at the top level or under a ``[jido_trio]`` table;
        ``[plugin_options.NAME]`` tables give plugin options.
        """
        try:
            with Path(path).open("rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
        if "jido_trio" in data and isinstance(data["jido_trio"], dict):
            data = data["jido_trio"]
        return cls.from_mapping(data)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build a config from ``JIDO_TRIO_*`` environment variables.

        ``JIDO_TRIO_NODE_NAME=n1`` sets ``node_name``; numbers are parsed;
        ``JIDO_TRIO_PLUGIN_OPTIONS`` holds a JSON object. Variables named in
        ``JIDO_TRIO_NON_CONFIG_VARS`` (the plugin switches) are ignored.
        """
        import json

        env = os.environ if environ is None else environ
        fields = {a.name: a for a in attrs.fields(cls)}
        data: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX) or key in NON_CONFIG_VARS:
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in fields:
                raise ConfigError(f"unknown config variable {key}")
            if name == "plugin_options":
                try:
                    data[name] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{key} must be a JSON object: {exc}") from exc
                continue
            default = fields[name].default
            if isinstance(default, bool):
                data[name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                data[name] = _parse(key, raw, int)
            elif isinstance(default, float):
                data[name] = _parse(key, raw, float)
            else:
                data[name] = raw
        return cls.from_mapping(data)

    def options_for(self, name: str) -> Mapping[str, Any]:
        """The ``plugin_options`` entry for an implementation name (empty if none)."""
        return self.plugin_options.get(name, MappingProxyType({}))


#: Environment variables with the config prefix that are not config fields.
NON_CONFIG_VARS = frozenset({"JIDO_TRIO_BLOCK_PLUGINS", "JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD"})


def _parse(key: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{key} must be a {kind.__name__}, got {raw!r}") from exc
