"""Helpers for testing code that uses jido_trio (and jido_trio itself)."""

from __future__ import annotations

from ._crash import crash_agent as crash_agent
