"""Issue 17, finding 3: what an action sends commits with its state.

examples/bank_transfer.py moves money between accounts on SQLite, and on NATS
JetStream: a transfer debits the payer and sends the credit with
``ctx.send``. The node's process is killed with SIGKILL in the middle of the
load, twice; every transfer is then sent again by its id. Before the outbox,
credits went out for debits that never committed and the total came back
above what it was (10,004 for 10,000).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "bank_transfer.py"
TRANSFERS = 400
TOTAL = 10 * 1_000

pytestmark = pytest.mark.slow


def load_until_killed(db: Path | str, seed: int, kill_after: int) -> int:
    """Run the load, SIGKILL it after ``kill_after`` acknowledged transfers."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "load", str(db), str(TRANSFERS), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    acked = 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.startswith("acked "):
                acked += 1
            if acked >= kill_after or time.monotonic() > deadline:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    return acked


def settle(db: Path | str, seed: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "settle", str(db), str(TRANSFERS), str(seed)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def killed_twice_then_settled(where: Path | str, seed: int) -> dict[str, int]:
    assert load_until_killed(where, seed, kill_after=60 + 40 * seed) > 0
    assert load_until_killed(where, seed, kill_after=250) > 0
    return settle(where, seed)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_total_stays_exact_under_kill_9(tmp_path: Path, seed: int) -> None:
    balances = killed_twice_then_settled(tmp_path / "bank.db", seed)
    assert sum(balances.values()) == TOTAL
    assert all(amount >= 0 for amount in balances.values())


@pytest.mark.parametrize("seed", [1, 2])
def test_the_total_stays_exact_when_the_node_is_killed_on_nats(seed: int) -> None:
    testing = pytest.importorskip("jido_trio_nats.testing")
    with testing.start_nats_server() as server:
        balances = killed_twice_then_settled(f"{server.url}/bank{seed}", seed)
    assert sum(balances.values()) == TOTAL
    assert all(amount >= 0 for amount in balances.values())
