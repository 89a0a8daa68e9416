"""What the Savina benchmarks are, whatever runs them: names, sizes, checks.

Savina (Imam & Sarkar, "Savina - An Actor Benchmark Suite", AGERE 2014) is a
set of actor workloads. ``bench/savina.py`` runs them on jido_trio and on
hand-written raw Trio actors; ``bench/peer_triotp.py`` and
``bench/peer_pykka.py`` run them on triotp and pykka in those peers' own
virtualenvs. All four import this module, which is plain Python (no trio, no
jido_trio), so each runtime does the same work and checks its result the same
way: a run whose result is wrong raises :class:`WrongResult` and reports no time.
"""

from __future__ import annotations

import math
from typing import Any

#: Benchmark name -> title, in the order of the table. What one run of each
#: does is in bench/README.md (and in :func:`check`, which says what it must produce).
BENCHMARKS: dict[str, str] = {
    "pingpong": "PingPong",
    "threadring": "ThreadRing",
    "counting": "Counting",
    "fjthroughput": "ForkJoin throughput",
    "fjcreate": "ForkJoin creation",
    "big": "Big",
    "chameneos": "Chameneos",
}

#: Sizes of a full run: on 2 cores each raw-Trio run takes 0.1-0.3 s.
SIZES: dict[str, dict[str, int]] = {
    "pingpong": {"n": 4_000},
    "threadring": {"actors": 500, "hops": 10_250},
    "counting": {"n": 20_000},
    "fjthroughput": {"actors": 60, "messages": 250},
    "fjcreate": {"actors": 2_000},
    "big": {"actors": 120, "pings": 50},
    "chameneos": {"chameneos": 20, "meetings": 2_500},
}

#: Sizes of a smoke run (``--quick``): the harness works, the figures mean nothing.
QUICK_SIZES: dict[str, dict[str, int]] = {
    "pingpong": {"n": 300},
    "threadring": {"actors": 50, "hops": 1_025},
    "counting": {"n": 1_000},
    "fjthroughput": {"actors": 10, "messages": 50},
    "fjcreate": {"actors": 200},
    "big": {"actors": 20, "pings": 10},
    "chameneos": {"chameneos": 6, "meetings": 300},
}

#: Chameneo colours (Savina's Chameneos uses three).
COLOURS = 3


class Done:
    """Where the last actor of a run leaves the result, and the event (a
    ``trio.Event`` or a ``threading.Event``) that tells the driver."""

    def __init__(self, event: Any) -> None:
        self.event = event
        self.result: dict[str, Any] = {}

    def set(self, **result: Any) -> None:
        self.result = result
        self.event.set()


class WrongResult(AssertionError):
    """A run finished with a result that is not the workload's: no time for it."""


def sizes(quick: bool) -> dict[str, dict[str, int]]:
    return QUICK_SIZES if quick else SIZES


def compute(theta: float = 37.2) -> float:
    """ForkJoin's per-message work (Savina's ``performComputation``)."""
    sint = math.sin(theta)
    result = sint * sint
    if result <= 0:
        raise WrongResult("sin(theta)^2 <= 0")
    return result


def complement(mine: int, other: int) -> int:
    """The colour a chameneo takes after meeting one of colour ``other``."""
    return mine if mine == other else COLOURS - mine - other


def check(name: str, size: dict[str, int], result: dict[str, Any]) -> None:
    """Raise :class:`WrongResult` unless ``result`` is what one run of ``name``
    at ``size`` must produce. Keys of ``result`` per benchmark:

    - pingpong: ``pongs`` received by ping, ``pings`` received by pong
    - threadring: ``at``, the index of the actor where the token stopped (started at 0)
    - counting: ``count`` the counter reported
    - fjthroughput: ``done`` actors that reported, ``total`` messages they processed
    - fjcreate: ``done`` actors that reported, ``total`` messages they processed
    - big: ``done`` actors that reported, ``pongs`` they received, ``pings`` answered
    - chameneos: ``exited`` chameneos, ``meetings`` summed over them (two per meeting)
    """
    expected: dict[str, Any]
    if name == "pingpong":
        expected = {"pongs": size["n"], "pings": size["n"]}
    elif name == "threadring":
        expected = {"at": size["hops"] % size["actors"]}
    elif name == "counting":
        expected = {"count": size["n"]}
    elif name == "fjthroughput":
        expected = {"done": size["actors"], "total": size["actors"] * size["messages"]}
    elif name == "fjcreate":
        expected = {"done": size["actors"], "total": size["actors"]}
    elif name == "big":
        total = size["actors"] * size["pings"]
        expected = {"done": size["actors"], "pongs": total, "pings": total}
    elif name == "chameneos":
        expected = {"exited": size["chameneos"], "meetings": 2 * size["meetings"]}
    else:
        raise KeyError(name)
    got = {key: result.get(key) for key in expected}
    if got != expected:
        raise WrongResult(f"{name}: expected {expected}, got {got}")
