"""Every example in examples/ runs to completion as its own program."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
TIMEOUT = 60


def run_example(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # The examples must not depend on third-party plugins that happen to be installed.
    env["JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [sys.executable, "-W", "error", str(path)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_examples_exist() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"demo.py", "counter.py", "supervision.py", "multi_node.py", "plugin.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    result = run_example(script, tmp_path)
    assert result.returncode == 0, (
        f"{script.name} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert result.stderr == "", f"{script.name} wrote to stderr:\n{result.stderr}"
    if script.name == "demo.py":
        check_demo_output(result.stdout)


def check_demo_output(stdout: str) -> None:
    """The demo's summary proves that nothing was lost, and its output stays readable."""
    lines = stdout.splitlines()
    assert "== SUMMARY" in lines, stdout
    summary = lines[lines.index("== SUMMARY") :]
    assert not [line for line in summary if "FAILED" in line], stdout
    assert sum("[ok]" in line for line in summary) >= 5, stdout
    assert any(line.startswith("RESULT: OK") for line in summary), stdout
    assert len(lines) <= 60, f"demo printed {len(lines)} lines"
