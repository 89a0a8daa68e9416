"""Rules every engine applies the same way: argument checks and registry matching.

An engine calls the checks at the top of its public methods, before any
I/O, so that every engine refuses the same bad arguments with the same
errors. A bad argument is a programming error, not a :class:`~jido_trio.JidoError`:
a wrong type raises :class:`TypeError`, a value out of range :class:`ValueError`
(the convention of every protocol in :mod:`jido_trio.abc`)::

    from jido_trio.abc import (
        StateBackend, check_expected_version, check_state_key, check_state_value,
    )

    class MyState(StateBackend):
        async def write(self, key, value, *, expected_version=None):
            check_state_key(key)
            data = check_state_value(value)
            check_expected_version(expected_version)
            ...

A check returns its argument (``check_state_value`` a ``bytes`` copy of it), so
it can stand where the argument is used.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import get_args

from .._exceptions import ConfigError
from .._ref import AgentRef
from ._state import Consistency

# Every function here is public, listed in (and imported from) jido_trio.abc.

_LEVELS: tuple[Consistency, ...] = get_args(Consistency)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------- StateBackend


def check_state_key(key: str, what: str = "key") -> str:
    """``key`` if it can name a state key, a log stream or a key prefix
    (``what`` says which, for the message): a ``str`` that is valid Unicode
    text, since engines store names as UTF-8.

    :raises TypeError: ``key`` is not a ``str``.
    :raises ValueError: ``key`` holds an unpaired surrogate code point, which
        has no UTF-8 form.
    """
    if not isinstance(key, str):
        raise TypeError(f"state {what} must be a str, got {type(key).__name__}")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"state {what} {key[:40]!r} holds an unpaired surrogate (no UTF-8 form)"
            ) from None
    return key


def check_state_value(data: bytes, what: str = "state values") -> bytes:
    """``data`` as ``bytes`` (a copy of a ``bytearray`` or ``memoryview``), for
    a value or a log record (``what`` names them, for the message).

    :raises TypeError: ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    return bytes(data)


def check_expected_version(expected_version: int | None) -> int | None:
    """``expected_version`` if it is ``None`` or a version an engine can
    compare with: an ``int >= 0`` (``0``: the key must be absent).

    :raises ValueError: anything else.
    """
    if expected_version is not None and (not _is_int(expected_version) or expected_version < 0):
        raise ValueError(f"expected_version must be None or an int >= 0, got {expected_version!r}")
    return expected_version


def check_consistency(consistency: Consistency) -> Consistency:
    """``consistency`` if it is one of ``"strong"``, ``"eventual"``, ``"weak"``.

    :raises ValueError: anything else.
    """
    if consistency not in _LEVELS:
        raise ValueError(f"consistency must be one of {_LEVELS}, got {consistency!r}")
    return consistency


def check_log_seq(name: str, value: int) -> int:
    """``value`` if it can be a log position (``after``, ``upto``: ``name``):
    an ``int``. Any int is valid: positions below 1 or above the last record
    simply select nothing or everything.

    :raises TypeError: ``value`` is not an ``int`` (``bool`` is refused).
    """
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def check_log_limit(limit: int | None) -> int | None:
    """``limit`` if it can bound :meth:`~jido_trio.abc.StateBackend.read_log`:
    ``None`` (no bound) or an ``int >= 0``.

    :raises TypeError: ``limit`` is neither ``None`` nor an ``int``.
    :raises ValueError: ``limit`` is negative.
    """
    if limit is not None:
        if not _is_int(limit):
            raise TypeError(f"limit must be None or an int, got {type(limit).__name__}")
        if limit < 0:
            raise ValueError(f"limit must be None or >= 0, got {limit}")
    return limit


# ---------------------------------------------------------------- Registry


def check_registered_ref(ref: AgentRef) -> str:
    """The owning node of ``ref``, which a registration or a take-over needs.

    :raises ValueError: ``ref.node`` is ``None``.
    """
    node = ref.node
    if node is None:
        raise ValueError("a registered ref must name its owning node")
    return node


def registry_matcher(
    *,
    type: str | None = None,
    node: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Callable[[AgentRef, Mapping[str, Any]], bool]:
    """The test :meth:`~jido_trio.abc.Registry.select` applies to each entry,
    as a function of the entry's ref and metadata.

    It is true when every given criterion holds: the ref's ``type`` and
    ``node`` equal those given, and the entry's metadata has each key of
    ``metadata`` with an equal value. A registry that keeps entries in parts
    calls it before building the :class:`~jido_trio.abc.RegistryEntry` of a
    match; one that has entries calls ``matches(entry.ref, entry.metadata)``.
    """
    wanted = tuple((metadata or {}).items())

    def matches(ref: AgentRef, entry_metadata: Mapping[str, Any]) -> bool:
        return (
            (type is None or ref.type == type)
            and (node is None or ref.node == node)
            and all(k in entry_metadata and entry_metadata[k] == v for k, v in wanted)
        )

    return matches


# ---------------------------------------------------------------- Coordination


def check_ttl(ttl: float) -> float:
    """``ttl`` if it can be a lease's time to live: a positive number of
    seconds (``math.inf`` included).

    :raises ValueError: ``ttl`` is not positive (or is NaN).
    """
    if not ttl > 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")
    return ttl


def check_parties(parties: int) -> int:
    """``parties`` if it can size a barrier: at least 1.

    :raises ValueError: ``parties`` is less than 1.
    """
    if parties < 1:
        raise ValueError(f"parties must be at least 1, got {parties!r}")
    return parties


def check_option_keys(options: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Refuse keys of an engine's options (``plugin_options[name]``, or a
    table inside it) that the engine does not know: a typo must not be
    ignored silently.

    :param where: how the user wrote the table, e.g. ``"plugin_options['nats']"``.
    :raises ConfigError: ``options`` is not a table, or has unknown keys.
    """
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where} must be a table, got {options!r}")
    known = set(known)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown {where} key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )
