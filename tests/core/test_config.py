"""Config: defaults, validation, TOML and environment."""

from __future__ import annotations

from pathlib import Path

import pytest

import jido_trio as jt


def test_defaults_are_local() -> None:
    config = jt.Config()
    assert config.mode == "local"
    assert (config.registry, config.transport, config.coordination) == ("local",) * 3
    assert config.state == "memory"
    assert config.operation_timeout == 5.0
    assert config.failure_detection_threshold == 3
    assert config.dedupe_window >= 10_000
    assert config.node_name.startswith("node-")
    assert jt.Config().node_name != config.node_name


def test_from_toml_with_distributed_options(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        """
        [jido_trio]
        node_name = "n1"
        mode = "datacenter"
        transport = "local"
        operation_timeout = 2.5
        [jido_trio.plugin_options.nats]
        servers = ["nats://127.0.0.1:4222"]
        [jido_trio.plugin_options.sqlite]
        path = "state.db"
        """
    )
    config = jt.Config.from_toml(path)
    assert config.node_name == "n1" and config.mode == "datacenter"
    assert config.operation_timeout == 2.5
    assert config.options_for("nats")["servers"] == ["nats://127.0.0.1:4222"]
    assert config.options_for("unknown") == {}


def test_unknown_and_invalid_keys_are_clear(tmp_path: Path) -> None:
    with pytest.raises(jt.ConfigError, match=r"unknown config key.*colour"):
        jt.Config.from_mapping({"colour": "blue"})
    with pytest.raises(jt.ConfigError, match="mode"):
        jt.Config(mode="planet")  # type: ignore[arg-type]
    with pytest.raises(jt.ConfigError, match="operation_timeout"):
        jt.Config(operation_timeout=0)
    with pytest.raises(jt.ConfigError, match="mailbox_size"):
        jt.Config(mailbox_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(jt.ConfigError, match="plugin_options"):
        jt.Config(plugin_options={"x": 1})  # type: ignore[dict-item]
    bad = tmp_path / "bad.toml"
    bad.write_text("node_name = ")
    with pytest.raises(jt.ConfigError, match="invalid TOML"):
        jt.Config.from_toml(bad)
    with pytest.raises(jt.ConfigError, match="cannot read"):
        jt.Config.from_toml(tmp_path / "missing.toml")
    assert issubclass(jt.ConfigError, ValueError)


def test_from_env() -> None:
    config = jt.Config.from_env(
        {
            "JIDO_TRIO_NODE_NAME": "envnode",
            "JIDO_TRIO_OPERATION_TIMEOUT": "1.5",
            "JIDO_TRIO_MAILBOX_SIZE": "64",
            "JIDO_TRIO_PLUGIN_OPTIONS": '{"sqlite": {"path": "x.db"}}',
            "JIDO_TRIO_BLOCK_PLUGINS": "ignored-here",
            "UNRELATED": "1",
        }
    )
    assert config.node_name == "envnode"
    assert config.operation_timeout == 1.5 and config.mailbox_size == 64
    assert config.options_for("sqlite") == {"path": "x.db"}
    with pytest.raises(jt.ConfigError, match="JIDO_TRIO_COLOUR"):
        jt.Config.from_env({"JIDO_TRIO_COLOUR": "blue"})
    with pytest.raises(jt.ConfigError, match="int"):
        jt.Config.from_env({"JIDO_TRIO_MAILBOX_SIZE": "many"})
    with pytest.raises(jt.ConfigError, match="JSON"):
        jt.Config.from_env({"JIDO_TRIO_PLUGIN_OPTIONS": "{"})


async def test_unknown_implementation_lists_available() -> None:
    with pytest.raises(
        jt.ConfigError, match=r"unknown transport implementation 'carrier-pigeon'.*local"
    ):
        async with jt.open_node(jt.Config(transport="carrier-pigeon")):
            pass
    with pytest.raises(jt.ConfigError, match="memory"):
        async with jt.open_node(jt.Config(state="nowhere")):
            pass


async def test_name_overrides_config() -> None:
    async with jt.open_node(jt.Config(node_name="a"), name="b") as node:
        assert node.name == "b"
