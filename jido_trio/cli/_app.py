"""The ``jido-trio`` command line (typer + rich)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from typing import Final
from typing import NoReturn

import attrs
import msgspec
import trio
import typer
from rich.console import Console

from .._config import Config
from .._exceptions import JidoError
from .._groups import exception_leaves
from ._admin import AgentSpec
from ._admin import plan_node
from ._admin import run_node
from ._protocol import DEFAULT_ADMIN
from ._protocol import AdminAddress
from ._protocol import AdminError
from ._protocol import AgentHealth
from ._protocol import AgentRow
from ._protocol import NodeInfo
from ._protocol import TreeNode
from ._protocol import exchange
from ._render import agents_table
from ._render import health_text
from ._render import supervision_tree

__all__ = ["EXIT_ADMIN_ERROR", "HEALTH_EXIT_CODES", "app", "main"]

#: Exit codes of ``jido-trio health``.
HEALTH_EXIT_CODES: Final = {"healthy": 0, "degraded": 1, "unreachable": 2, "not_found": 3}
#: Exit code of every client command when the admin endpoint cannot be asked.
EXIT_ADMIN_ERROR: Final = 4

app = typer.Typer(
    name="jido-trio",
    help="Run and inspect jido_trio nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Run a node.", no_args_is_help=True)
agents_app = typer.Typer(help="Inspect the agents of a running node.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(agents_app, name="agents")

AdminOption = Annotated[
    str,
    typer.Option(
        "--admin",
        "-a",
        metavar="HOST:PORT",
        help="Admin endpoint of a node started with `jido-trio node run` (loopback only).",
    ),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the node's answer.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the raw result as JSON.")]


def _stdout() -> Console:
    return Console(highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def _address(text: str) -> AdminAddress:
    try:
        return AdminAddress.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--admin") from None


def _ask(admin: str, ops: list[tuple[str, str | None]], timeout: float) -> list[object]:
    address = _address(admin)
    try:
        return exchange(address, ops, timeout=timeout)
    except AdminError as exc:
        _fail(str(exc), EXIT_ADMIN_ERROR)


def _print_json(value: object) -> None:
    typer.echo(msgspec.json.encode(value).decode())


# ---------------------------------------------------------------- node run


@node_app.command("run")
def node_run(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            exists=True,
            dir_okay=False,
            help="TOML config file (Config.from_toml); local defaults when omitted.",
        ),
    ] = None,
    admin: Annotated[
        str | None,
        typer.Option(
            "--admin",
            "-a",
            metavar="HOST:PORT",
            help=(
                "Where the admin endpoint listens (loopback only; port 0 picks a free port). "
                f"Default: plugin_options.cli.admin from the config, else {DEFAULT_ADMIN}."
            ),
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Override the config's node_name.")
    ] = None,
    agent: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            metavar="MODULE:CLASS=ID",
            help="Start an agent at boot (repeatable), after those of plugin_options.cli.agents.",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="Log level of messages on stderr.")
    ] = "warning",
) -> None:
    """Run a node until SIGINT or SIGTERM, then stop it gracefully (exit 0).

    The first line on stdout is `admin listening on HOST:PORT`: the address the
    `agents ls`, `health` and `tree` commands take with --admin.
    """
    try:
        cfg = Config.from_toml(config) if config is not None else Config()
        if name is not None:
            cfg = attrs.evolve(cfg, node_name=name)
    except (JidoError, ValueError) as exc:
        _fail(str(exc))
    address = _address(admin) if admin is not None else None
    try:
        specs = [AgentSpec.parse(text) for text in agent or ()]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--agent") from None
    level = logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    try:
        plan = plan_node(cfg, address, specs)
    except JidoError as exc:
        _fail(str(exc))
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        trio.run(run_node, plan)
    except BaseExceptionGroup as group:
        errors = exception_leaves(group)
        if not all(isinstance(e, Exception) for e in errors):
            raise
        _fail("; ".join(_describe(e) for e in errors))
    except (JidoError, OSError) as exc:
        _fail(_describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"cannot run the node: {exc}"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- client commands


@agents_app.command("ls")
def agents_ls(
    admin: AdminOption = DEFAULT_ADMIN,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """List the node's local agents with their health."""
    info, rows = _ask(admin, [("info", None), ("agents", None)], timeout)
    assert isinstance(info, NodeInfo) and isinstance(rows, list)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        _stdout().print(f"no agents on node {info.node!r}", markup=False)
        return
    _stdout().print(agents_table([r for r in rows if isinstance(r, AgentRow)], info))


@app.command()
def health(
    agent_id: Annotated[str, typer.Argument(help="The agent's id.")],
    admin: AdminOption = DEFAULT_ADMIN,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Print an agent's health.

    Exit code: 0 healthy, 1 degraded, 2 unreachable, 3 not found
    (4: the admin endpoint could not be asked).
    """
    (result,) = _ask(admin, [("health", agent_id)], timeout)
    assert isinstance(result, AgentHealth)
    if as_json:
        _print_json(result)
    else:
        _stdout().print(health_text(result))
    raise typer.Exit(HEALTH_EXIT_CODES.get(result.health, EXIT_ADMIN_ERROR))


@app.command()
def tree(
    admin: AdminOption = DEFAULT_ADMIN,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Draw the node's supervision tree with status, restarts and last failure."""
    info, root = _ask(admin, [("info", None), ("tree", None)], timeout)
    assert isinstance(info, NodeInfo) and isinstance(root, TreeNode)
    if as_json:
        _print_json(root)
        return
    _stdout().print(supervision_tree(root, info))


# ---------------------------------------------------------------- demo and bench


@app.command()
def demo(
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.2, max=60.0, help="How long the load runs.")
    ] = 4.0,
    agents: Annotated[
        int, typer.Option("--agents", min=2, max=10_000, help="Counter agents to start.")
    ] = 200,
    senders: Annotated[
        int, typer.Option("--senders", min=1, max=1_000, help="Concurrent sender tasks.")
    ] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random workload.")] = 2024,
) -> None:
    """Run the demo job with a live view and a summary that proves nothing was lost.

    Counter agents under two supervisors take instructions from concurrent
    senders while a chaos task crashes some of them; every agent's state is
    read back at the end. Exit code 0 if every check passed, 1 otherwise.
    """
    from ._demo import DemoSettings
    from ._demo import run_demo

    settings = DemoSettings(seconds=seconds, agents=agents, senders=senders, seed=seed)
    passed = trio.run(run_demo, settings, _stdout())
    raise typer.Exit(0 if passed else 1)


def find_bench(start: Path | None = None) -> Path | None:
    """``bench/run.py`` of the source checkout containing ``start`` (the current
    directory by default), if any."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "bench" / "run.py"
        if candidate.is_file():
            return candidate
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            break
    return None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks of the current source checkout.

    Runs `bench/run.py` (extra arguments are passed on); outside a checkout,
    says how to run `nox -s bench`.
    """
    script = find_bench()
    if script is None:
        _fail(
            "no bench/run.py here: the benchmarks live in the jido_trio source checkout. "
            "Run them from its root with `nox -s bench` (or `python bench/run.py`)."
        )
    sys.stdout.flush()
    code = subprocess.call([sys.executable, str(script), *ctx.args], cwd=script.parent.parent)
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the ``jido-trio`` console script."""
    app()
