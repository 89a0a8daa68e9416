"""Mapping of jido_trio names (keys, log streams, node names) onto NATS tokens.

NATS KV keys allow ``[-/_=.A-Za-z0-9]`` and subjects split on ``.``; jido_trio
keys are arbitrary strings. Every character outside ``[-/_A-Za-z0-9]`` becomes
``=XX`` (its UTF-8 bytes in hex), so an encoded name is one subject token,
never contains a wildcard, and decodes back exactly.
"""

from __future__ import annotations

__all__ = ["decode_token", "encode_token"]

_SAFE = frozenset(b"-/_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
#: The empty string needs a token of its own (tokens cannot be empty).
_EMPTY = "="


def encode_token(name: str) -> str:
    """Encode ``name`` as one NATS subject token / KV key."""
    if not name:
        return _EMPTY
    raw = name.encode("utf-8")
    if all(b in _SAFE for b in raw):
        return name
    return "".join(chr(b) if b in _SAFE else f"={b:02X}" for b in raw)


def decode_token(token: str) -> str:
    """Invert :func:`encode_token`."""
    if token == _EMPTY:
        return ""
    if "=" not in token:
        return token
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode("utf-8")
