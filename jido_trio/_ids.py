"""Unique, time-sortable identifiers.

128 bits as 32 lowercase hex digits: 48 bits of Unix milliseconds, then 80
bits that start random and are incremented within one millisecond, so ids made
by one process sort in creation order and ids from different processes do not
collide. Hex keeps that order under plain string comparison and is several
times cheaper to produce in CPython than base32.
"""

from __future__ import annotations

import random
import time

__all__ = ["id_time", "new_id"]

_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1
#: A bit above the 128 of an id: ``hex()`` of the sum always has 33 digits
#: after "0x1", so slicing off 3 characters leaves the zero-padded 32 (a
#: format spec with padding costs twice as much).
_SENTINEL = 1 << 128

_time_ns = time.time_ns
_hex = hex
_last_ms = -1
#: The last id as an int (with the sentinel bit), the largest value the same
#: millisecond may reach before its random part would overflow, and the clock
#: reading (ns) where the next millisecond begins.
_last_value = 0
_last_limit = -1
_next_ms_ns = -1


def new_id() -> str:
    """Return a new 32-character id that sorts after every id made before it here."""
    global _last_value
    # Still in the millisecond of the last id (or the clock went back): the
    # next value of that millisecond, without dividing the clock reading.
    if _time_ns() < _next_ms_ns:
        value = _last_value + 1
        if value <= _last_limit:
            _last_value = value
            return _hex(value)[3:]
    return _new_millisecond_id()


def _new_millisecond_id() -> str:
    global _last_ms, _last_value, _last_limit, _next_ms_ns
    ms = _time_ns() // 1_000_000
    if ms <= _last_ms:
        # The clock went back, or this millisecond's values ran out: go on
        # from the last millisecond used, so ids keep sorting in order.
        value = _last_value + 1
        if value <= _last_limit:
            _last_value = value
            return _hex(value)[3:]
        ms = _last_ms + 1
    # One bit short of full width leaves room to increment within the ms;
    # random reseeds itself in forked children, so processes do not collide.
    base = _SENTINEL | (ms << _RANDOM_BITS)
    _last_ms = ms
    _last_value = base | random.getrandbits(_RANDOM_BITS - 1)
    _last_limit = base | _RANDOM_MAX
    _next_ms_ns = (ms + 1) * 1_000_000
    return _hex(_last_value)[3:]


def id_time(identifier: str) -> float:
    """Return the Unix time (seconds) encoded in an id made by :func:`new_id`."""
    return int(identifier[:12], 16) / 1000.0
