"""``jido-trio node run``: a node from a TOML config plus its admin endpoint."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import ClassVar
from typing import Final
from typing import cast

import attrs
import msgspec
import trio

from .._agent import Agent
from .._config import Config
from .._exceptions import AgentAlreadyExists
from .._exceptions import AgentNotFound
from .._exceptions import AgentUnavailable
from .._exceptions import ConfigError
from .._health import Health
from .._node import Node
from .._node import open_node
from .._supervisor import ChildInfo
from .._supervisor import Restart
from .._supervisor import SupervisorInfo
from ._protocol import DEFAULT_ADMIN
from ._protocol import MAX_REQUEST
from ._protocol import PROTOCOL_VERSION
from ._protocol import AdminAddress
from ._protocol import AgentHealth
from ._protocol import AgentRow
from ._protocol import ErrorInfo
from ._protocol import FrameReader
from ._protocol import FrameTooLarge
from ._protocol import NodeInfo
from ._protocol import Reply
from ._protocol import Request
from ._protocol import TreeNode
from ._protocol import encode_frame
from ._protocol import request_decoder

__all__ = [
    "AdminServer",
    "AgentSpec",
    "CliOptions",
    "NodePlan",
    "load_agent_class",
    "plan_node",
    "run_node",
]

log = logging.getLogger("jido_trio.cli")

#: Exit code of ``node run`` when a second signal cut its shutdown short.
FORCED_EXIT: Final = 1
#: The ``plugin_options`` key the CLI reads from a config file.
CLI_OPTIONS_KEY: Final = "cli"
_RESTARTS: Final = ("permanent", "transient", "temporary")


@attrs.frozen(kw_only=True)
class AgentSpec:
    """An agent to start when the node boots: ``module:Class`` and an id."""

    cls: str
    id: str
    restart: Restart = "permanent"

    @classmethod
    def parse(cls, text: str) -> AgentSpec:
        """Parse the command-line form ``module:Class=agent_id``."""
        path, sep, agent_id = text.partition("=")
        if not sep or not path.strip() or not agent_id.strip():
            raise ValueError(f"expected module:Class=agent_id, got {text!r}")
        return cls(cls=path.strip(), id=agent_id.strip())


@attrs.frozen(kw_only=True)
class CliOptions:
    """The ``[plugin_options.cli]`` table of a config file.

    .. code-block:: toml

        [plugin_options.cli]
        admin = "127.0.0.1:7411"
        agents = [
            { class = "myapp.agents:Counter", id = "counter-1" },
            { class = "myapp.agents:Worker", id = "w1", restart = "transient" },
        ]
        # Modules imported at boot, so this node can also take over (fail
        # over) agents of types it does not start itself.
        imports = ["myapp.agents"]
    """

    admin: AdminAddress | None = None
    agents: tuple[AgentSpec, ...] = ()
    imports: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> CliOptions:
        """:raises ConfigError: unknown keys or malformed values."""
        options = config.options_for(CLI_OPTIONS_KEY)
        unknown = sorted(set(options) - {"admin", "agents", "imports"})
        if unknown:
            raise ConfigError(
                f"unknown key(s) in plugin_options.{CLI_OPTIONS_KEY}: {', '.join(unknown)}; "
                "known: admin, agents, imports"
            )
        imports = options.get("imports", [])
        if (
            not isinstance(imports, Sequence)
            or isinstance(imports, str)
            or not all(isinstance(m, str) and m for m in imports)
        ):
            raise ConfigError(
                f"plugin_options.{CLI_OPTIONS_KEY}.imports must be a list of module names"
            )
        admin = None
        if "admin" in options:
            if not isinstance(options["admin"], str):
                raise ConfigError(f"plugin_options.{CLI_OPTIONS_KEY}.admin must be a string")
            try:
                admin = AdminAddress.parse(options["admin"])
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        raw_agents = options.get("agents", [])
        if not isinstance(raw_agents, Sequence) or isinstance(raw_agents, str):
            raise ConfigError(f"plugin_options.{CLI_OPTIONS_KEY}.agents must be a list of tables")
        return cls(
            admin=admin,
            agents=tuple(_agent_spec(entry) for entry in raw_agents),
            imports=tuple(imports),
        )


def _agent_spec(entry: Any) -> AgentSpec:
    where = f"plugin_options.{CLI_OPTIONS_KEY}.agents"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"each entry of {where} must be a table, got {entry!r}")
    unknown = sorted(set(entry) - {"class", "id", "restart"})
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    cls_path, agent_id = entry.get("class"), entry.get("id")
    restart = entry.get("restart", "permanent")
    if (
        not isinstance(cls_path, str)
        or not cls_path
        or not isinstance(agent_id, str)
        or not agent_id
    ):
        raise ConfigError(f"each entry of {where} needs string 'class' and 'id', got {entry!r}")
    if restart not in _RESTARTS:
        raise ConfigError(f"restart in {where} must be one of {', '.join(_RESTARTS)}")
    return AgentSpec(cls=cls_path, id=agent_id, restart=cast(Restart, restart))


def load_agent_class(path: str) -> type[Agent]:
    """Import ``module:Class`` (``Class`` may be dotted) and check it is an agent.

    :raises ConfigError: cannot import, or not an :class:`Agent` subclass.
    """
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ConfigError(f"agent class must be given as module:Class, got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load agent class {path!r}: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, Agent)):
        raise ConfigError(f"{path!r} is not a jido_trio.Agent subclass")
    return target


def tree_node(info: SupervisorInfo | ChildInfo) -> TreeNode:
    """The wire form of a supervision tree snapshot."""
    if isinstance(info, ChildInfo):
        return TreeNode(
            id=info.id,
            kind=info.kind,
            status=info.status,
            restarts=info.restarts,
            last_failure=info.last_failure,
        )
    return TreeNode(
        id=info.id,
        kind="supervisor",
        status=info.status,
        restarts=info.restarts,
        last_failure=info.last_failure,
        strategy=info.strategy,
        children=[tree_node(child) for child in info.children],
    )


class _BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _error(code: str, message: str) -> Reply:
    return Reply(ok=False, error=ErrorInfo(code=code, message=message))


@attrs.define(eq=False)
class AdminServer:
    """The read-only admin endpoint of a node (see :mod:`._protocol`).

    Every connection is handled in its own task; nothing a client sends can
    stop the node: malformed input gets an error reply, oversized or stalled
    frames close that connection only.
    """

    node: Node
    max_connections: int = 64
    #: Seconds a connection may stay silent between requests.
    idle_timeout: float = 60.0
    #: Seconds to receive the rest of a started frame, or to send a reply.
    frame_timeout: float = 10.0
    _active: int = attrs.field(default=0, init=False)

    async def serve(
        self,
        address: AdminAddress,
        *,
        task_status: trio.TaskStatus[AdminAddress] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address`` (port 0 picks a free one) and report the bound address."""
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        try:
            host, port = listeners[0].socket.getsockname()[:2]
            task_status.started(AdminAddress(host, port))
            await trio.serve_listeners(self._handle, listeners)
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self._active >= self.max_connections:
            await self._send(stream, _error("busy", "too many admin connections"))
            return
        self._active += 1
        try:
            await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
            pass  # the client went away
        except Exception:
            log.exception("admin connection failed")
        finally:
            self._active -= 1

    async def _send(self, stream: trio.SocketStream, reply: Reply) -> bool:
        with trio.move_on_after(self.frame_timeout):
            try:
                await stream.send_all(encode_frame(reply))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True
        return False

    async def _converse(self, stream: trio.SocketStream) -> None:
        reader = FrameReader(stream, MAX_REQUEST)
        while True:
            size: int | None = None
            with trio.move_on_after(self.idle_timeout):
                try:
                    size = await reader.header()
                except FrameTooLarge as exc:
                    await self._send(stream, _error("frame_too_large", str(exc)))
                    return
            if size is None:
                return
            with trio.move_on_after(self.frame_timeout) as slow:
                data = await reader.body(size)
            if slow.cancelled_caught:
                return
            if not await self._send(stream, await self.dispatch(data)):
                return

    async def dispatch(self, data: bytes) -> Reply:
        """Answer one request body."""
        try:
            req = request_decoder.decode(data)
        except msgspec.DecodeError as exc:
            await trio.lowlevel.checkpoint()
            return _error("invalid_request", f"malformed request: {exc}")
        if req.v != PROTOCOL_VERSION:
            await trio.lowlevel.checkpoint()
            return _error(
                "unsupported_version",
                f"protocol version {req.v} is not supported (this node speaks {PROTOCOL_VERSION})",
            )
        handler = self._ops.get(req.op)
        if handler is None:
            await trio.lowlevel.checkpoint()
            return _error(
                "unknown_op", f"unknown op {req.op!r}; known: {', '.join(sorted(self._ops))}"
            )
        try:
            result = await handler(self, req)
        except _BadRequest as exc:
            return _error(exc.code, str(exc))
        except Exception as exc:
            log.exception("admin op %r failed", req.op)
            return _error("internal", f"{type(exc).__name__}: {exc}")
        return Reply(ok=True, result=result)

    async def _info(self, _req: Request) -> NodeInfo:
        from .. import __version__

        await trio.lowlevel.checkpoint()
        config = self.node.config
        return NodeInfo(
            node=self.node.name,
            mode=config.mode,
            pid=os.getpid(),
            version=__version__,
            agents=len(self.node.agents()),
            registry=config.registry,
            transport=config.transport,
            state=config.state,
            coordination=config.coordination,
        )

    async def _agents(self, _req: Request) -> list[AgentRow]:
        rows = []
        for ref in sorted(self.node.agents(), key=lambda r: r.id):
            health = await self.node.check_agent_health(ref)
            rows.append(AgentRow(id=ref.id, type=ref.type, node=ref.node, health=health.value))
        await trio.lowlevel.checkpoint()
        return rows

    async def _health(self, req: Request) -> AgentHealth:
        if not req.id:
            raise _BadRequest("invalid_request", "op 'health' needs a non-empty 'id'")
        try:
            ref = await self.node.lookup(req.id)
        except (AgentNotFound, AgentUnavailable):
            return AgentHealth(id=req.id, health=Health.NOT_FOUND.value)
        health = await self.node.check_agent_health(ref)
        return AgentHealth(id=req.id, health=health.value, type=ref.type, node=ref.node)

    async def _tree(self, _req: Request) -> TreeNode:
        await trio.lowlevel.checkpoint()
        return tree_node(self.node.supervision_tree())

    _ops: ClassVar[dict[str, Callable[[AdminServer, Request], Any]]] = {
        "ping": _info,
        "info": _info,
        "agents": _agents,
        "health": _health,
        "tree": _tree,
    }


def _print(line: str) -> None:
    print(line, flush=True)


@attrs.frozen(kw_only=True)
class NodePlan:
    """Everything ``node run`` needs, checked before anything starts."""

    config: Config
    admin: AdminAddress
    agents: tuple[tuple[AgentSpec, type[Agent]], ...] = ()


def plan_node(
    config: Config, admin: AdminAddress | None = None, agents: Sequence[AgentSpec] = ()
) -> NodePlan:
    """Resolve the admin address and import the agent classes.

    ``admin`` defaults to ``plugin_options.cli.admin``, then
    :data:`DEFAULT_ADMIN`; ``agents`` start after those of the config file.

    :raises ConfigError: bad ``plugin_options.cli`` or agent classes.
    """
    options = CliOptions.from_config(config)
    for module in options.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import {module!r} (plugin_options.cli.imports): {exc}"
            ) from exc
    address = admin or options.admin or AdminAddress.parse(DEFAULT_ADMIN)
    specs = [*options.agents, *agents]
    return NodePlan(
        config=config,
        admin=address,
        agents=tuple((spec, load_agent_class(spec.cls)) for spec in specs),
    )


async def _watch_signals(
    signals: AsyncIterator[int], stop: trio.Event, name: str, echo: Callable[[str], None]
) -> None:
    """The first signal asks for a graceful stop; a second one exits at once."""
    async for signum in signals:
        which = signal.Signals(signum).name
        if not stop.is_set():
            echo(f"received {which}: stopping node {name!r} (send it again to exit at once)")
            stop.set()
            continue
        echo(f"received {which} again: exiting without waiting for node {name!r}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(FORCED_EXIT)


async def run_node(plan: NodePlan, *, echo: Callable[[str], None] = _print) -> None:
    """Run a node until SIGINT or SIGTERM, then shut it down gracefully.

    The first line passed to ``echo`` is ``admin listening on HOST:PORT``.
    A second SIGINT or SIGTERM during the shutdown ends the process at once
    with exit code :data:`FORCED_EXIT`.

    :raises OSError: the admin address cannot be bound.
    :raises JidoError: the node failed (e.g. its root supervisor gave up).
    """
    name = plan.config.node_name
    stop = trio.Event()
    # Before the node exists, so a signal during start-up is handled once it runs.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as watcher:
            watcher.start_soon(_watch_signals, signals, stop, name, echo)
            async with open_node(plan.config) as node:
                for spec, cls in plan.agents:
                    try:
                        await node.start_agent(cls, spec.id, restart=spec.restart)
                    except AgentAlreadyExists:
                        # Failover already brought it back (here or elsewhere).
                        echo(f"agent {spec.id!r} is already running in the cluster")
                async with trio.open_nursery() as nursery:
                    bound = await nursery.start(AdminServer(node).serve, plan.admin)
                    echo(f"admin listening on {bound}")
                    echo(
                        f"node {name!r} running with {len(node.agents())} agent(s); "
                        "stop it with Ctrl-C or SIGTERM"
                    )
                    await stop.wait()
                    nursery.cancel_scope.cancel()
            watcher.cancel_scope.cancel()
    echo(f"node {name!r} stopped")
