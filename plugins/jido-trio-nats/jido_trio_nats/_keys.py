"""Mapping of jido_trio names (keys, log streams, node names) onto NATS tokens.

NATS KV keys allow ``[-/_=.A-Za-z0-9]`` and subjects split on ``.``; jido_trio
keys are arbitrary strings. Every character outside ``[-/_A-Za-z0-9]`` becomes
``=XX`` (its UTF-8 bytes in hex), so an encoded name is one subject token,
never contains a wildcard, and decodes back exactly.

Both directions check their input: a name too long for a subject is refused
before it reaches the server (which would close the whole connection), and a
token read back from NATS (a KV key anyone with access may have written) that
:func:`encode_token` could not have made is refused rather than misread.
"""

from __future__ import annotations

import logging

from jido_trio import InvalidMessage

__all__ = [
    "MAX_SUBJECT_LENGTH",
    "MAX_TOKEN_LENGTH",
    "decode_token",
    "decode_token_or_none",
    "encode_token",
]

log = logging.getLogger("jido_trio_nats")

#: Longest subject the plugin sends. The server closes the connection of a
#: client whose protocol line exceeds ``max_control_line`` (4 KiB by default);
#: subject, reply inbox and sizes share that line.
MAX_SUBJECT_LENGTH = 2048
#: Longest encoded name: leaves room for the longest prefix put before one.
MAX_TOKEN_LENGTH = MAX_SUBJECT_LENGTH - 128
_HEX = frozenset("0123456789ABCDEF")

_SAFE = frozenset(b"-/_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
#: The empty string needs a token of its own (tokens cannot be empty).
_EMPTY = "="


def encode_token(name: str, what: str = "name") -> str:
    """Encode ``name`` as one NATS subject token / KV key.

    :raises InvalidMessage: the encoded name is longer than :data:`MAX_TOKEN_LENGTH`.
    """
    if not name:
        return _EMPTY
    raw = name.encode("utf-8")
    if all(b in _SAFE for b in raw):
        token = name
    else:
        token = "".join(chr(b) if b in _SAFE else f"={b:02X}" for b in raw)
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidMessage(
            f"{what} {name[:40]!r}... is too long for NATS "
            f"({len(token)} > {MAX_TOKEN_LENGTH} characters once encoded)"
        )
    return token


def decode_token(token: str) -> str:
    """Invert :func:`encode_token`.

    :raises InvalidMessage: ``token`` is not something :func:`encode_token` makes.
    """
    if token == _EMPTY:
        return ""
    if "=" not in token:
        if not token or not all(ord(c) < 128 and ord(c) in _SAFE for c in token):
            raise InvalidMessage(f"not an encoded name: {token[:60]!r}")
        return token
    out = bytearray()
    i = 0
    try:
        while i < len(token):
            if token[i] == "=":
                digits = token[i + 1 : i + 3]
                if len(digits) != 2 or not _HEX.issuperset(digits):
                    raise ValueError("bad escape")
                out.append(int(digits, 16))
                i += 3
            else:
                out.append(ord(token[i]))
                i += 1
        name = out.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise InvalidMessage(f"not an encoded name: {token[:60]!r}") from None
    if encode_token(name) != token:  # e.g. "=41" for "A": two keys, one name
        raise InvalidMessage(f"not an encoded name: {token[:60]!r}")
    return name


def decode_token_or_none(token: str, where: str) -> str | None:
    """:func:`decode_token` for a key read back from NATS: ``None`` (and a
    warning naming ``where``) for one this plugin cannot have written."""
    try:
        return decode_token(token)
    except InvalidMessage:
        log.warning("ignoring the key %r in %s: not an encoded name", token[:60], where)
        return None
