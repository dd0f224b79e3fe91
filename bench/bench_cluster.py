"""The cluster's numbers: the y-websocket load generator against one node, three cluster
nodes behind HAProxy, and `--workers 2`, side by side. A script, not a test.

    .venv/bin/python bench/bench_cluster.py --setups one,three,three-hashed,workers2 --duration 10

Each setup gets fresh processes: its own `redis-server` on a free port (never the shared
one), a fresh PostgreSQL database (`tracks_bench_*`, dropped afterwards) for documents and
events in cluster setups, and for `three` a real HAProxy (deploy/haproxy.cfg) spreading
each room's clients over the nodes round robin; `three-hashed` is the same behind
`balance uri` (the room's path hashed: a room's clients meet on one node, which still
publishes to its stream; deploy/haproxy.cfg keeps round robin). Health checks run as in
deploy/haproxy.cfg (every second). The `one` node is a plain `rtc serve` (embedded SQLite,
no Redis): the single-node baseline; `one-cluster` is one cluster node (Redis, PostgreSQL,
no proxy): what cluster mode costs by itself, apart from spreading rooms over nodes.

Figures, between the load generator's measure-start and measure-end markers:
- fan-out latency p50/p99 (the load generator's, stamped on its common clock);
- CPU µs per delivery summed over every node process and Redis (HAProxy shown apart);
- Redis commands and bytes (in + out) per document update sent;
- the saturation ramp (--ramp): rooms20x5 at rising rates until p99 > 100 ms or a
  delivery is lost; the highest rate that held.
On this 2-core machine the load generator shares the cores with everything measured: a
ramp that stops is often the load generator's limit, which the report says (its own CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_servers import BENCH, PYTHON, ROOT, START_TIMEOUT, cpu_seconds, stop

SETUPS = ("one", "one-cluster", "three", "three-hashed", "workers2")
SCENARIOS = ("rooms20x5", "room50")
POSTGRES = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
RAMP_RATES = (20, 40, 80, 160, 320)  # updates/s per room, 20 rooms


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Setup:
    name: str
    url: str
    pids: list[int] = field(default_factory=list)  # node processes (and their workers)
    redis_port: int | None = None
    redis_pid: int | None = None
    haproxy_pid: int | None = None


def children(pid: int) -> list[int]:
    """A process and its descendants (a --workers supervisor's workers)."""
    found = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            for child in text:
                found.extend(children(int(child)))
    except OSError:
        pass
    return found


def redis_info(port: int) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO stats\r\n")
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 3:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            header, _, body = data.partition(b"\r\n")
            if header.startswith(b"$") and len(body) >= int(header[1:]):
                break
    info = {}
    for line in data.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key in ("total_commands_processed", "total_net_input_bytes", "total_net_output_bytes"):
            info[key] = int(value)
    return info


@contextmanager
def process(command: list[str], log: Path, env: dict[str, str] | None = None,
            ready: str | None = None) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=subprocess.PIPE if ready else out, stderr=out, text=True)
    try:
        if ready:
            found = threading.Event()

            def drain() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if ready in line:
                        found.set()

            threading.Thread(target=drain, daemon=True).start()
            if not found.wait(START_TIMEOUT):
                raise RuntimeError(f"{command[:4]} not ready; see {log}")
        yield proc
    finally:
        stop(proc, 15)


@contextmanager
def database() -> Iterator[str]:
    import psycopg

    name = f"tracks_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rtc_command(port: int, data_dir: Path, *extra: str) -> list[str]:
    return [str(PYTHON), "-m", "rtc", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--log-level", "WARNING", *extra]


@contextmanager
def start(setup: str, workdir: Path) -> Iterator[Setup]:
    with ExitStack() as stack:
        if setup == "one":
            port = free_port()
            node = stack.enter_context(
                process(rtc_command(port, workdir / "one"), workdir / "one.log",
                        ready="Events:"))
            yield Setup(setup, f"ws://127.0.0.1:{port}/rooms", [node.pid])
            return
        redis_port = free_port()
        redis = stack.enter_context(process(
            [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            workdir / "redis.log"))
        wait_port(redis_port)
        pg = stack.enter_context(database())
        cluster = ["--cluster", f"redis://127.0.0.1:{redis_port}/0", "--documents", pg,
                   "--recorder", pg]
        if setup == "workers2":
            port = free_port()
            node = stack.enter_context(process(
                rtc_command(port, workdir / "w", *cluster, "--workers", "2"),
                workdir / "workers.log", ready="Events:"))
            yield Setup(setup, f"ws://127.0.0.1:{port}/rooms", children(node.pid),
                        redis_port, redis.pid)
            return
        ports = [free_port() for _ in range(1 if setup == "one-cluster" else 3)]
        nodes = [
            stack.enter_context(process(
                rtc_command(port, workdir / f"n{index}", *cluster, "--node-id", f"n{index}"),
                workdir / f"n{index}.log", ready="Events:"))
            for index, port in enumerate(ports, start=1)
        ]
        if setup == "one-cluster":  # no proxy: what cluster mode costs a node by itself
            yield Setup(setup, f"ws://127.0.0.1:{ports[0]}/rooms", [nodes[0].pid],
                        redis_port, redis.pid)
            return
        proxy_port = free_port()
        config = render_haproxy(
            proxy_port, ports, balance="uri" if setup == "three-hashed" else None
        )
        (workdir / "haproxy.cfg").write_text(config)
        haproxy = stack.enter_context(process(
            [shutil.which("haproxy") or "/usr/sbin/haproxy", "-f",
             str(workdir / "haproxy.cfg"), "-db"], workdir / "haproxy.log"))
        wait_port(proxy_port)
        time.sleep(1.0)  # health checks mark the nodes up (rise 2 x 200 ms)
        yield Setup(setup, f"ws://127.0.0.1:{proxy_port}/rooms", [n.pid for n in nodes],
                    redis_port, redis.pid, haproxy.pid)


def render_haproxy(port: int, backends: list[int], balance: str | None = None) -> str:
    """deploy/haproxy.cfg with this bind port and these servers (and another `balance`)."""
    template = (ROOT / "deploy" / "haproxy.cfg").read_text()
    lines = []
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("bind "):
            lines.append(f"    bind 127.0.0.1:{port}")
        elif stripped.startswith("server "):
            continue
        elif stripped.startswith("balance ") and balance is not None:
            lines.append(f"    balance {balance}")
        else:
            lines.append(line)
    out = "\n".join(lines) + "\n"
    # Checks as deployed (every second), quicker only while a node changes state.
    servers = "".join(
        f"    server n{index} 127.0.0.1:{p} check inter 1s fastinter 200ms fall 2 rise 2\n"
        for index, p in enumerate(backends, start=1)
    )
    return out + servers


def wait_port(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def measure(setup: Setup, scenario: str, duration: float, rate: int | None) -> dict[str, Any]:
    command = ["node", str(BENCH / "loadgen.mjs"), "--url", setup.url, "--scenario", scenario,
               "--duration", str(duration)]
    if rate is not None:
        command += ["--rate", str(rate)]
    pids = list(setup.pids) + ([setup.redis_pid] if setup.redis_pid else [])
    marks: dict[str, tuple[float, dict[int, float], dict[str, int], float]] = {}
    report: dict[str, Any] = {}
    loadgen = subprocess.Popen(command, cwd=BENCH, stdout=subprocess.PIPE, text=True)
    assert loadgen.stdout is not None
    for line in loadgen.stdout:
        message = json.loads(line)
        if "phase" in message:
            cpus = {pid: sum(cpu_seconds(pid)) for pid in pids + (
                [setup.haproxy_pid] if setup.haproxy_pid else [])}
            info = redis_info(setup.redis_port) if setup.redis_port else {}
            marks[message["phase"]] = (time.monotonic(), cpus, info,
                                       sum(sum(cpu_seconds(p)) for p in children(loadgen.pid)))
        elif "report" in message:
            report = message["report"]
    loadgen.wait()
    if not report or "measure-start" not in marks or "measure-end" not in marks:
        return {"error": f"loadgen exited {loadgen.returncode} without a report"}
    (t0, c0, i0, l0), (t1, c1, i1, l1) = marks["measure-start"], marks["measure-end"]
    node_cpu = sum(c1[p] - c0[p] for p in setup.pids)
    redis_cpu = (c1[setup.redis_pid] - c0[setup.redis_pid]) if setup.redis_pid else 0.0
    proxy_cpu = (c1[setup.haproxy_pid] - c0[setup.haproxy_pid]) if setup.haproxy_pid else 0.0
    deliveries = report.get("deliveries_received") or 0
    updates = report.get("updates_sent") or 0
    result = {
        "p50_ms": report.get("latency_ms_p50"),
        "p99_ms": report.get("latency_ms_p99"),
        "loss": report.get("loss"),
        "updates": updates,
        "deliveries": deliveries,
        "cpu_us_per_delivery": round(1e6 * (node_cpu + redis_cpu) / deliveries, 1)
        if deliveries else None,
        "node_cpu_percent": round(100 * node_cpu / (t1 - t0), 1),
        "redis_cpu_percent": round(100 * redis_cpu / (t1 - t0), 1),
        "haproxy_cpu_percent": round(100 * proxy_cpu / (t1 - t0), 1),
        "loadgen_cpu_percent": round(100 * (l1 - l0) / (t1 - t0), 1),
    }
    if i0 and updates:
        result["redis_commands_per_update"] = round(
            (i1["total_commands_processed"] - i0["total_commands_processed"]) / updates, 2)
        result["redis_bytes_per_update"] = round(
            (i1["total_net_input_bytes"] - i0["total_net_input_bytes"]
             + i1["total_net_output_bytes"] - i0["total_net_output_bytes"]) / updates)
    return result


SPREAD = ("cpu_us_per_delivery", "p50_ms", "p99_ms", "redis_commands_per_update",
          "redis_bytes_per_update", "node_cpu_percent", "redis_cpu_percent")


def print_spread(results: dict[str, dict[str, Any]]) -> None:
    """Median [min-max] of the repeated runs of each setup and scenario."""
    print(f"\n{'setup':<12} {'scenario':<10} " + " ".join(f"{f:>22}" for f in SPREAD))
    for setup_name, by_run in results.items():
        scenarios: dict[str, list[dict[str, Any]]] = {}
        for label, result in by_run.items():
            scenarios.setdefault(label.partition("#")[0], []).append(result)
        for scenario, found in scenarios.items():
            cells = []
            for figure in SPREAD:
                values = sorted(r[figure] for r in found if r.get(figure) is not None)
                cells.append(
                    f"{values[len(values) // 2]:g} [{values[0]:g}-{values[-1]:g}]"
                    if values else "-"
                )
            print(f"{setup_name:<12} {scenario:<10} " + " ".join(f"{c:>22}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ramp", action="store_true", help="also the saturation ramp")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each scenario this many times (fresh processes each)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rtc-cluster-bench-") as tmp:
        for setup_name in [s for s in args.setups.split(",") if s]:
            runs: list[tuple[str, str, int | None]] = [
                (s if args.repeat == 1 else f"{s}#{n}", s, None)
                for s in args.scenarios.split(",") if s
                for n in range(1, args.repeat + 1)
            ]
            if args.ramp:
                runs += [(f"ramp{rate}", "rooms20x5", rate) for rate in RAMP_RATES]
            for label, scenario, rate in runs:
                workdir = Path(tmp) / f"{setup_name}-{label}"
                workdir.mkdir()
                print(f"… {label} on {setup_name}", file=sys.stderr, flush=True)
                try:
                    with start(setup_name, workdir) as setup:
                        result = measure(setup, scenario, args.duration, rate)
                except RuntimeError as error:
                    result = {"error": str(error)}
                results.setdefault(setup_name, {})[label] = result
                print(f"   {json.dumps(result)}", file=sys.stderr, flush=True)
                if label.startswith("ramp") and (
                    "error" in result or (result.get("p99_ms") or 0) > 100 or result.get("loss")
                ):
                    break
    print(f"\n{'setup':<12} {'run':<12} result")
    for setup_name, by_run in results.items():
        for label, result in by_run.items():
            print(f"{setup_name:<12} {label:<12} {json.dumps(result)}")
    if args.repeat > 1:
        print_spread(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
