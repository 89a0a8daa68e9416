"""Run the chaos test (test_nats_chaos.py) once per seed and tally the outcomes.

``python tests/distributed/nats/chaos_tally.py FIRST_SEED COUNT [OUT_DIR]``:
runs are sequential, each bounded by :data:`RUN_BOUND` seconds; every run
keeps its JSON report and its artifacts (node logs, side logs) under
OUT_DIR/seed-N. Prints one line per run, then the tally; exits 1 if any run
failed. Not part of the suite: a tool for the tally the issue asks for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[3]
RUN_BOUND = 420.0


def run(seed: int, out: Path) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.json"
    report.unlink(missing_ok=True)
    env = {**os.environ, "JIDO_CHAOS_SEED": str(seed), "JIDO_CHAOS_REPORT": str(report)}
    started = time.monotonic()
    with (out / "pytest.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow",
             "tests/distributed/nats/test_nats_chaos.py", f"--basetemp={out / 'tmp'}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            code = process.wait(RUN_BOUND)
        except subprocess.TimeoutExpired:
            process.kill()  # the pytest process this script started
            code = process.wait()
    result: dict[str, object] = {
        "seed": seed,
        "exit": code,
        "wall": round(time.monotonic() - started),
    }
    if report.exists():
        data = json.loads(report.read_text())
        result.update(
            violations=data.get("violations", []),
            notes=data.get("notes", []),
            seconds=data.get("seconds"),
        )
    return result


def main() -> int:
    first, count = int(sys.argv[1]), int(sys.argv[2])
    out = Path(sys.argv[3] if len(sys.argv) > 3 else "chaos-tally")
    results = []
    for seed in range(first, first + count):
        result = run(seed, out / f"seed-{seed}")
        results.append(result)
        verdict = "pass" if result["exit"] == 0 else "FAIL"
        print(f"seed {seed}: {verdict} in {result['wall']}s", flush=True)
        for line in result.get("violations", []):  # type: ignore[attr-defined]
            print(f"    {line.splitlines()[0]}", flush=True)
    passed = sum(r["exit"] == 0 for r in results)
    print(f"{passed}/{len(results)} passed")
    (out / "tally.json").write_text(json.dumps(results, indent=1))
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
