"""Run the load generator against each server and print one table. A script, not a test.

    .venv/bin/python bench/bench_servers.py --servers node,pycrdt,ours --duration 10

Each (server, scenario) pair gets a fresh server process on 127.0.0.1 with a port it
picked itself, and a fresh ``node bench/loadgen.mjs``. Server CPU and RSS come from
/proc/<pid>: CPU between the load generator's measure-start and measure-end markers,
RSS at those markers and the kernel's peak (VmHWM). Linux only.

--procs N is handed to the load generator: the clients of a traffic or idle scenario are
split across N node worker processes (one event loop per slice, so a client does not wait
behind the whole room applying each update), latency stamped on a clock common to them.
Without it the load generator picks min(4, cores + 1) for scenarios of 20 or more
clients, 1 otherwise; --procs 1 puts every client in one process.

--pin puts the server on the last CPU and the load generator on the others (Linux CPU
affinity), so the two do not take turns on one core: server CPU readings vary less from run
to run, which is what comparing two builds of a server needs. Latency then reflects a load
generator with one core fewer.

Writers (--scenarios writers1000,writers3000,writers-ramp): 10 rooms x 5 clients, every
client writing in turn, each writer replacing its previous stamp so the documents stay
bounded. Awareness is on (every client has a presence state); cursors stay put, so what is
measured is the write path; --writers-cursor 1 moves the writer's cursor with each write
(typing), which roughly doubles the messages; --writers-grow makes writers only add (the
documents grow all run long, as in room50). writers1000 and writers3000 offer that many
updates/s in all and report the server's CPU per update (CPU between the markers / updates
sent); writers-ramp offers 500, 1,000, 2,000 ... 8,000 updates/s, each step on a fresh
server, until a step fails: p99 over 100 ms, any loss, or the load generator offering under
95 % of the rate. The highest step passed is the highest sustained rate. The ramp runs ours
with --max-messages-per-second 1000: past ~6,000 updates/s with cursors a writer sends more
than the default allowance of 300 messages/s, a policy rather than a capacity.

Servers:
    node    the reference @y/websocket-server 0.1.1 (tests/js/reference_server.mjs)
    pycrdt  bare pycrdt-websocket (bench/bare_pycrdt_server.py)
    ours    ``python -m rtc serve`` with its defaults (events to SQLite, persistence)
    base    the same, run from another checkout (--baseline DIR, e.g. `git worktree add`):
            a before/after comparison in one run, side by side with the others
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
SCENARIOS = (
    "room50", "rooms20x5", "idle1000", "join10", "awareness10", "writers1000", "writers3000",
    "writers-ramp",
)
DEFAULT_SCENARIOS = SCENARIOS[:-1]  # the ramp is a run of its own: ask for it
WRITER_ROOMS = 10  # writers10x5's rooms: a total rate is split evenly across them
RAMP = (500, 1000, 2000, 3000, 4000, 5000, 6000, 8000)  # updates/s in all
RAMP_P99_MS = 100.0
RAMP_OFFERED_SHARE = 0.95  # below this share of the rate, the load generator fell behind
SERVERS = ("node", "pycrdt", "ours", "base")
BASELINE: list[Path] = []  # --baseline: where `base` runs from
WRITERS_GROW = False  # --writers-grow: writers only add (the documents grow all run long)
START_TIMEOUT = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Server:
    name: str
    process: subprocess.Popen[str]
    url: str
    log: Path
    lines: list[str] = field(default_factory=list)


def _port_from_json(line: str) -> int | None:
    try:
        return int(json.loads(line)["port"])
    except (ValueError, KeyError, TypeError):
        return None


def _port_from_banner(line: str) -> int | None:
    match = re.search(r"ws://127\.0\.0\.1:(\d+)/rooms", line)
    return int(match[1]) if match else None


def _command(
    name: str, data_dir: Path, extra: tuple[str, ...] = ()
) -> tuple[list[str], Callable[[str], int | None]]:
    if name == "node":
        # The same launcher the interop tests use (its packages: tests/js/node_modules).
        launcher = BENCH.parent / "tests" / "js" / "reference_server.mjs"
        return ["node", str(launcher)], _port_from_json
    if name == "pycrdt":
        return [str(PYTHON), str(BENCH / "bare_pycrdt_server.py")], _port_from_json
    if name in ("ours", "base"):
        command = [str(PYTHON), "-m", "rtc", "serve", "--host", "127.0.0.1", "--port", "0"]
        return [*command, "--data-dir", str(data_dir), *extra], _port_from_banner
    raise ValueError(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A Popen preexec_fn confining the child (and every thread it starts) to `cpus`."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load generator CPUs): the last CPU and the rest, or no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


@contextmanager
def running(
    name: str, workdir: Path, cpus: set[int] | None = None, extra: tuple[str, ...] = ()
) -> Iterator[Server]:
    """Start one server, wait for the line that names its port, stop it afterwards.

    `extra`: more arguments for ours (ignored for the others)."""
    data_dir = workdir / f"{name}-data"
    data_dir.mkdir()
    log = workdir / f"{name}.log"
    command, port_of = _command(name, data_dir, extra if name in ("ours", "base") else ())
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": "0"}
    cwd = ROOT
    if name == "base":  # `python -m rtc` imports rtc from its working directory
        cwd = BASELINE[0]
        env["PYTHONPATH"] = str(cwd)
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=_pinned(cpus),
        )
    found = threading.Event()
    server = Server(name, process, "", log)

    def drain() -> None:
        # Keep reading so a chatty server never blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line)
            port = port_of(line) if not found.is_set() else None
            if port is not None:
                server.url = f"ws://127.0.0.1:{port}/rooms"
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not found.wait(START_TIMEOUT):
            raise RuntimeError(f"{name} did not report its port; see {log}")
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[str], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of proc(5); index 0 here is field 3.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M)[1])  # type: ignore[index]
        for key in ("VmRSS", "VmHWM")
    }


def run_scenario(
    server: Server,
    scenario: str,
    duration: float,
    procs: int | None = None,
    cpus: set[int] | None = None,
    rate: int | None = None,
    cursor_share: float = 0.0,
) -> dict[str, Any]:
    """One load generator run; `rate` (writers scenarios): updates/s in all, with
    `cursor_share` cursor moves per update."""
    pid = server.process.pid
    baseline = memory_kb(pid)["VmRSS"]
    command = [
        "node",
        str(BENCH / "loadgen.mjs"),
        "--url",
        server.url,
        "--scenario",
        "writers10x5" if scenario.startswith("writers") else scenario,
        "--duration",
        str(duration),
    ]
    if rate is not None:
        command += ["--rate", f"{rate / WRITER_ROOMS:g}"]
        command += ["--cursor-rate", f"{rate * cursor_share / WRITER_ROOMS:g}"]
        command += ["--replace", "no" if WRITERS_GROW else "yes"]
    if procs is not None:
        command += ["--procs", str(procs)]
    marks: dict[str, tuple[float, tuple[float, float], int]] = {}
    report: dict[str, Any] = {}
    deadline = duration + 120
    loadgen = subprocess.Popen(
        command, cwd=BENCH, stdout=subprocess.PIPE, text=True, preexec_fn=_pinned(cpus)
    )
    timer = threading.Timer(deadline, loadgen.kill)
    timer.start()
    try:
        assert loadgen.stdout is not None
        for line in loadgen.stdout:
            message = json.loads(line)
            if "phase" in message:
                marks[message["phase"]] = (
                    time.monotonic(),
                    cpu_seconds(pid),
                    memory_kb(pid)["VmRSS"],
                )
            elif "report" in message:
                report = message["report"]
        loadgen.wait()
    finally:
        timer.cancel()
    if not report:
        return {"error": f"loadgen exited {loadgen.returncode} without a report"}
    if "measure-start" in marks and "measure-end" in marks:
        (t0, (u0, s0), rss0), (t1, (u1, s1), rss1) = marks["measure-start"], marks["measure-end"]
        c0, c1 = u0 + s0, u1 + s1
        report["server_cpu_user_seconds"] = round(u1 - u0, 3)
        report["server_cpu_system_seconds"] = round(s1 - s0, 3)
        report["server_cpu_percent"] = round(100 * (c1 - c0) / (t1 - t0), 1)
        report["server_cpu_seconds"] = round(c1 - c0, 3)
        report["server_rss_mb"] = round(rss1 / 1024, 1)
        connections = report.get("clients", 0)
        if scenario.startswith("idle") and connections:
            report["server_kb_per_connection"] = round((rss0 - baseline) / connections, 1)
        deliveries = report.get("deliveries_received")
        if deliveries:
            report["server_cpu_us_per_delivery"] = round(1e6 * (c1 - c0) / deliveries, 1)
        updates = report.get("updates_sent")
        if updates:
            report["server_cpu_us_per_update"] = round(1e6 * (c1 - c0) / updates, 1)
            report["updates_per_second"] = round(updates / (t1 - t0), 1)
    report["server_rss_baseline_mb"] = round(baseline / 1024, 1)
    report["server_peak_rss_mb"] = round(memory_kb(pid)["VmHWM"] / 1024, 1)
    report["server_alive"] = server.process.poll() is None
    return report


def ramp_step_passed(rate: int, r: dict[str, Any]) -> bool:
    """A ramp step holds: no loss, p99 within RAMP_P99_MS, the rate really offered."""
    if "error" in r or not r.get("server_alive", False) or r.get("loss") != 0:
        return False
    p99 = r.get("latency_ms_p99")
    offered = r.get("updates_per_second") or 0
    return p99 is not None and p99 <= RAMP_P99_MS and offered >= RAMP_OFFERED_SHARE * rate


def run_ramp(
    name: str,
    workdir: Path,
    duration: float,
    procs: int | None,
    server_cpus: set[int] | None,
    loadgen_cpus: set[int] | None,
    cursor_share: float = 0.0,
) -> dict[str, Any]:
    """The writers ramp on one server: a fresh server per step, up to the first failed step."""
    steps: list[dict[str, Any]] = []
    sustained = None
    extra = ("--max-messages-per-second", "1000")
    for rate in RAMP:
        step_dir = workdir / f"{rate}"
        step_dir.mkdir()
        print(f"… writers-ramp on {name}: {rate} updates/s", file=sys.stderr, flush=True)
        try:
            with running(name, step_dir, server_cpus, extra) as server:
                report = run_scenario(
                    server, "writers-ramp", duration, procs, loadgen_cpus, rate, cursor_share
                )
        except RuntimeError as error:
            report = {"error": str(error)}
        passed = ramp_step_passed(rate, report)
        steps.append({"rate": rate, "passed": passed, **report})
        if not passed:
            break
        sustained = rate
    return {"sustained_updates_per_second": sustained, "steps": steps}


def _writers_line(r: dict[str, Any]) -> str:
    return (
        f"{r.get('server_cpu_us_per_update')} µs cpu/update "
        f"(user {r.get('server_cpu_user_seconds')} s, "
        f"system {r.get('server_cpu_system_seconds')} s), "
        f"{r.get('updates_per_second')} updates/s, p50 {r.get('latency_ms_p50')} ms, "
        f"p99 {r.get('latency_ms_p99')} ms, loss {r.get('loss')}, "
        f"cpu {r.get('server_cpu_percent')}%, rss {r.get('server_rss_mb')} MB, "
        f"cursor moves {r.get('cursor_moves')}"
    )


def summary(scenario: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return str(r["error"])
    cpu = f"cpu {r.get('server_cpu_percent')}%"
    if scenario == "writers-ramp":
        lines = [f"highest sustained {r['sustained_updates_per_second']} updates/s"]
        for step in r["steps"]:
            verdict = "pass" if step["passed"] else "FAIL"
            detail = step.get("error") or _writers_line(step)
            lines.append(f"    {step['rate']:>5}/s {verdict}: {detail}")
        return "\n".join(lines)
    if scenario.startswith("writers"):
        return _writers_line(r)
    if scenario in ("room50", "rooms20x5"):
        return (
            f"p50 {r['latency_ms_p50']} ms, p99 {r['latency_ms_p99']} ms, "
            f"{r['deliveries_per_second']}/s, loss {r['loss']}, "
            f"{r.get('server_cpu_us_per_delivery')} µs cpu/delivery "
            f"(user {r.get('server_cpu_user_seconds')} s, "
            f"system {r.get('server_cpu_system_seconds')} s), "
            f"{r['awareness_messages_per_change']} aw msgs/change, "
            f"synced {r['synced']}/{r['clients']}, {cpu}, rss {r.get('server_rss_mb')} MB, "
            f"loadgen procs {r.get('procs', 1)}"
        )
    if scenario.startswith("idle"):
        return (
            f"{r.get('server_kb_per_connection')} KB/conn, idle {cpu}, "
            f"synced {r['synced']}/{r['clients']}, still up {r['still_connected']}, "
            f"rss {r.get('server_rss_mb')} MB"
        )
    if scenario.startswith("join"):
        return (
            f"fresh room {r['fresh_room']['synced']}/{r['clients']} synced, "
            f"populated room {r['populated_room']['synced']}/{r['clients']} synced"
        )
    if scenario.startswith("awareness"):
        return (
            f"{r['awareness_messages_received']} msgs for one change, "
            f"seen by {r['saw_change']}/{r['clients'] - 1}, synced {r['synced']}/{r['clients']}"
        )
    return json.dumps(r)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers", default="node,pycrdt", help="comma list of " + ",".join(SERVERS)
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma list of {','.join(SCENARIOS)} (default: all but writers-ramp)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per scenario")
    parser.add_argument(
        "--procs",
        type=int,
        help="load generator worker processes per scenario (traffic and idle scenarios); "
        "default: min(4, cores + 1) for 20+ clients, else 1; 1 = all clients in one process",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="server on the last CPU, load generator on the others (steadier CPU readings)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this project: server `base` runs `python -m rtc` from it",
    )
    parser.add_argument(
        "--writers-cursor",
        type=float,
        default=0.0,
        help="writers scenarios: cursor moves per update (default 0: cursors stay put)",
    )
    parser.add_argument(
        "--writers-grow",
        action="store_true",
        help="writers scenarios: writers only add text (documents grow) instead of replacing",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of each scenario (shows the spread)"
    )
    parser.add_argument("--json", type=Path, help="also write every report to this file")
    args = parser.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for name in scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}")
    global WRITERS_GROW
    WRITERS_GROW = args.writers_grow
    if "base" in servers:
        if args.baseline is None or not (args.baseline / "rtc").is_dir():
            parser.error("server base needs --baseline DIR, a checkout with rtc/")
        BASELINE.append(args.baseline.resolve())
    if args.procs is not None and args.procs < 1:
        parser.error("--procs must be at least 1")
    if not (BENCH / "node_modules").is_dir():
        parser.error(f"run `npm ci --prefix {BENCH}` first")

    server_cpus, loadgen_cpus = cpu_split(args.pin)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="rtc-bench-") as tmp:
        # --repeat: the servers take turns within each round, so a slow spell of the
        # machine hits them alike; rows are labelled name#round.
        runs = [
            (scenario, name, rnd)
            for scenario in scenarios
            for rnd in range(args.repeat)
            for name in servers
        ]
        for scenario, name, rnd in runs:
            label = name if args.repeat == 1 else f"{name}#{rnd + 1}"
            workdir = Path(tmp) / f"{scenario}-{label}"
            workdir.mkdir()
            print(f"… {scenario} on {name}", file=sys.stderr, flush=True)
            if scenario == "writers-ramp":
                report = run_ramp(
                    name, workdir, args.duration, args.procs, server_cpus, loadgen_cpus,
                    args.writers_cursor,
                )
                results.setdefault(scenario, {})[label] = report
                continue
            rate = int(scenario.removeprefix("writers")) if scenario.startswith("writers") else None
            try:
                with running(name, workdir, server_cpus) as server:
                    report = run_scenario(
                        server, scenario, args.duration, args.procs, loadgen_cpus, rate,
                        args.writers_cursor,
                    )
            except RuntimeError as error:
                report = {"error": str(error)}
            results.setdefault(scenario, {})[label] = report
    width = max(len(s) for s in scenarios)
    print(f"\n{'scenario':<{width}}  {'server':<7}  result")
    for scenario, by_server in results.items():
        for name, report in by_server.items():
            print(f"{scenario:<{width}}  {name:<7}  {summary(scenario, report)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
