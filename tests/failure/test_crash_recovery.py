"""A real node process killed with SIGKILL mid-stream of at-least-once sends,
restarted on the same SQLite file: every acknowledged instruction is applied,
and none twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).with_name("alo_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def run_until_killed(db: Path, kill_after: int) -> int:
    """Start a producer, SIGKILL it after ``kill_after`` receipts; return the last acked id."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "produce", str(db), "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    last = -1
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.startswith("acked "):
                last = int(line.split()[1])
            if last + 1 >= kill_after or time.monotonic() > deadline:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return last


def check(db: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, str(WORKER), "check", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_sigkill_mid_stream_loses_nothing_and_applies_once(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    acked = run_until_killed(db, kill_after=300)
    assert acked >= 299
    state = check(db)
    count = state["count"]
    # Every acknowledged instruction is applied ...
    assert count >= acked + 1
    # ... and none twice: the applied ids are exactly 0..count-1, each once.
    assert state["highest"] == count - 1
    assert state["total"] == count * (count - 1) // 2
    assert state["log_left"] == 0
    # A second crash on the same file, then a check: still exactly once.
    acked_again = run_until_killed(db, kill_after=200)
    assert acked_again >= 199
    again = check(db)
    assert again["count"] >= count
    assert again["total"] == sum(range(again["highest"] + 1))
