"""Authentication and TLS between nodes and real NATS servers."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio_nats.testing import start_nats_server
from tests._agents import Counter

from .conftest import new_namespace


def _config(servers: list[str], **nats: Any) -> jt.Config:
    return jt.Config(
        node_name="secure",
        registry="nats",
        transport="nats",
        state="nats",
        coordination="nats",
        plugin_options={
            "nats": {"servers": servers, "namespace": new_namespace(), "storage": "memory", **nats}
        },
    )


async def _round_trip(config: jt.Config) -> None:
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        await node.send_instruction(ref, jt.Instruction("increment", {"by": 2}))
        assert await node.call(ref, jt.Instruction("get")) == 2


async def test_user_and_password() -> None:
    with start_nats_server(user="jido", password="s3cret") as server:
        await _round_trip(_config([server.url], user="jido", password="s3cret"))
        with pytest.raises(jt.Unreachable, match=r"[Aa]uthoriz"):
            await _round_trip(_config([server.url], user="jido", password="wrong"))
        with pytest.raises(jt.Unreachable):
            await _round_trip(_config([server.url]))


async def test_token() -> None:
    with start_nats_server(token="t0ken") as server:
        await _round_trip(_config([server.url], token="t0ken"))
        with pytest.raises(jt.Unreachable, match=r"[Aa]uthoriz"):
            await _round_trip(_config([server.url], token="nope"))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=jido-test-ca",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=folder,
    )  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.cnf",
        cwd=folder,
    )  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_args = ["--tls", "--tlscert", str(cert), "--tlskey", str(key)]
    with start_nats_server(extra_args=tls_args) as server:
        url = f"tls://127.0.0.1:{server.port}"
        await _round_trip(_config([url], tls={"ca_file": str(ca)}))
        # Without our CA the server's certificate is not trusted.
        with pytest.raises(jt.Unreachable):
            await _round_trip(_config([url], tls={}, connect_timeout=1.0))


async def test_tls_is_never_downgraded_to_plaintext() -> None:
    """A server that does not start TLS (misconfigured, or someone answering
    for it) is refused before the client sends its CONNECT: the password
    never travels in clear."""
    received = bytearray()
    info = {"server_id": "fake", "version": "2.10.0", "max_payload": 1 << 20}

    async def fake_server(stream: trio.SocketStream) -> None:
        await stream.send_all(b"INFO " + json.dumps({**info, "auth_required": True}).encode())
        await stream.send_all(b"\r\n")
        with trio.move_on_after(5):
            async for chunk in stream:
                received.extend(chunk)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, fake_server, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        for servers, tls in (
            ([f"tls://127.0.0.1:{port}"], None),
            ([f"nats://127.0.0.1:{port}"], {}),
        ):
            with pytest.raises(jt.Unreachable, match="did not start TLS"):
                await _round_trip(
                    _config(
                        servers,
                        user="jido",
                        password="s3cret-pw",
                        connect_timeout=1.0,
                        reconnect_time_wait=0.1,
                        **({} if tls is None else {"tls": tls}),
                    )
                )
        nursery.cancel_scope.cancel()
    assert b"s3cret-pw" not in received
    assert b"CONNECT" not in received


async def test_a_plain_server_is_refused_when_tls_is_configured() -> None:
    with start_nats_server(user="jido", password="s3cret") as server:
        plain = f"tls://127.0.0.1:{server.port}"
        with pytest.raises(jt.Unreachable, match="did not start TLS"):
            await _round_trip(_config([plain], user="jido", password="s3cret", connect_timeout=1.0))


async def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(jt.ConfigError, match="unknown plugin_options\\['nats'\\] key"):
        await _round_trip(_config(["nats://127.0.0.1:1"], sever="typo"))
    with pytest.raises(jt.ConfigError, match="no file"):
        await _round_trip(_config(["nats://127.0.0.1:1"], creds=str(tmp_path / "missing.creds")))
    with pytest.raises(jt.ConfigError, match="unknown plugin_options\\['nats'\\]\\['tls'\\]"):
        await _round_trip(_config(["nats://127.0.0.1:1"], tls={"ca": "x"}))
    with pytest.raises(jt.ConfigError, match=r"key_file.*needs 'cert_file'"):
        await _round_trip(_config(["nats://127.0.0.1:1"], tls={"key_file": "client.key"}))
