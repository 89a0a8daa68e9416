"""Poison messages (issue 17, finding 1): a message that kills the whole
process is dead-lettered after ``max_delivery_attempts`` starts, across
process restarts; with default settings no single message exhausts a
supervisor's restart intensity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import jido_trio as jt
from jido_trio.testing import crash_agent
from tests._agents import Counter

WORKER = Path(__file__).with_name("poison_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def worker(command: str, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), command, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.slow
def test_a_message_that_kills_the_process_is_dead_lettered_after_restarts(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    sent = worker("send", db)
    assert sent.returncode == 17  # died in the poison's action
    acked = [line.split()[1] for line in sent.stdout.splitlines() if line.startswith("acked ")]
    assert "poison" in acked
    outcomes = []
    for _ in range(6):  # bounded: three starts of the poison, then it is set aside
        done = worker("run", db)
        outcomes.append(done.returncode)
        if done.returncode == 0:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            break
    else:
        pytest.fail(f"the poison message was never set aside: exits {outcomes}")
    assert outcomes[:-1] == [17] * (len(outcomes) - 1)
    # Every acknowledged good message applied, each once; the poison set aside.
    assert set(result["items"]) >= {item for item in acked if item != "poison"}
    assert len(result["items"]) == len(set(result["items"]))
    assert result["dead"] == ["poison"]


async def test_one_poison_message_does_not_exhaust_the_default_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Default settings: an at-least-once message that always raises crashes
    its agent max_delivery_attempts (3) times and is dead-lettered; only its
    first crash counts, so one more crash elsewhere does not stop the node."""
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        other = await node.start_agent(Counter, "other")
        await node.send_instruction(
            ref, jt.Instruction("boom", id="poison-1"), delivery="at_least_once"
        )
        await trio.sleep(1)
        [letter] = await node.dead_letters(ref)
        assert letter.payload.id == "poison-1"
        await crash_agent(node, other)  # one more crash anywhere, within max_seconds
        await node.send_instruction(ref, jt.Instruction("increment"))
        assert await node.call(ref, jt.Instruction("get")) == 1
        assert await node.call(other, jt.Instruction("get")) == 0
