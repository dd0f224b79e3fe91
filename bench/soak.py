"""Soak: many connections across many rooms, with edits, presence and churn, for a long time.
A script, not a test.

    .venv/bin/python bench/soak.py                       # 1,000 connections, 100 rooms, 10 min
    .venv/bin/python bench/soak.py --duration 150        # shorter
    .venv/bin/python bench/soak.py --duration 150 --debug   # + tracemalloc/gc/task snapshots
    .venv/bin/python bench/soak.py --duration 1800 --bounded  # documents' content bounded
    .venv/bin/python bench/soak.py --duration 1800 --bounded --reconnect
                                # their writers too: a fixed set of Yjs clients reconnecting
    .venv/bin/python bench/soak.py --bounded --room-life 120 --memory --watch Doc
                                # rooms come and go; memory by kind, live documents counted

The server is `python -m rtc serve` (its defaults: events to SQLite, documents persisted) on
127.0.0.1 with a port it picked. The load runs in a second process (`--load`, started by this
one) so that it does not share an interpreter with the server's measurements: pycrdt clients
over websockets, each in one room, each editing its own document and moving its cursor every
`--interval` seconds on average, and leaving (a new session takes its place) every `--churn`
seconds on average. With `--bounded` an edit replaces the session's previous insert and a
leaving session deletes its last one, so the documents' content stays bounded. Their CRDT
history does not: every Yjs client that ever wrote stays in a loaded document (its clock in the
state vector, its deleted items), about 590 bytes each in yrs and 700 in the Node server's Yjs
(`bench/crdt_history.py`), so rooms that stay loaded for the whole run grow with the new
clients they saw. With `--reconnect` a slot keeps one Yjs client and its later sessions are
that client reconnecting (same clientID, as y-websocket's provider after a dropped connection):
the writers are a fixed set, and the documents stay bounded in CRDT terms too. With
`--room-life S` new sessions go to a fresh set of rooms every S seconds and the old rooms empty
out and unload, as posts are opened and left during a day: what grows then is the server's own.
Nothing is unbounded: the number of connections is fixed, every wait has a timeout.

Server RSS and open descriptors come from /proc/<pid>, rooms and sessions from /healthz,
sampled every `--sample` seconds; the table marks start (load warm), middle and end, and a
last row after the load has left and the rooms' grace has passed. With `--debug` the server
runs under a small wrapper that, on SIGUSR1, appends tracemalloc's top growth since the
previous snapshot, gc counts and the number of asyncio tasks to `<data-dir>/debug.txt`.
`--memory` does without tracemalloc (which doubles what it measures) and appends, at every
sample, one JSON line: resident memory by kind of mapping (the brk heap, anonymous maps,
files), malloc's bytes in use and free, SQLite's, Python's allocated blocks, the session
history's size, the object types that grew most, and for each `--watch TYPE` how many are
alive and what refers to them (how the unloaded rooms' documents were found alive). Its
sampler walks every object in the server, which moves the heap by a couple of MB from one
sample to the next: take the RSS figures from a run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
START_TIMEOUT = 30.0
PAGE = os.sysconf("SC_PAGE_SIZE")

# --- the server's side -------------------------------------------------------------------

_DEBUG_WRAPPER = r"""
import asyncio, collections, ctypes, gc, json, os, re, resource, signal, sys, time, tracemalloc
path, trace = sys.argv.pop(1), sys.argv.pop(1) == "trace"
watched = [name for name in sys.argv.pop(1).split(",") if name]
if trace:
    tracemalloc.start(5)
    previous = [tracemalloc.take_snapshot()]
types_before = [collections.Counter()]


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def mallinfo():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        return {"malloc_in_use": info.uordblks + info.hblkhd, "malloc_free": info.fordblks,
                "malloc_mmapped": info.hblkhd}
    except (OSError, AttributeError):
        return {}


def arenas():
    # malloc_info's view of each arena (mallinfo2 gives only their sums): per arena, the
    # bytes it holds from the OS and how many of them are free.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        name = f"/tmp/malloc-info-{os.getpid()}.xml"
        stream = libc.fopen(name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        with open(name) as xml:
            text = xml.read()
        os.unlink(name)
    except (OSError, AttributeError):
        return {}
    found = []
    for heap in re.findall(r'<heap nr="(\d+)">(.*?)</heap>', text, re.S):
        held = re.search(r'<system type="current" size="(\d+)"', heap[1])
        free = sum(int(size) for size in re.findall(
            r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"', heap[1]))
        found.append([int(heap[0]), int(held.group(1)) if held else 0, free])
    return {"arenas": found}


def pymalloc():
    # Python's own arenas (1 MiB anonymous maps): how many, the bytes in them allocated,
    # free in pools in use, and in unused pools (a partly used arena cannot go back).
    import tempfile
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode()
    found = {}
    for key, label in (("py_arenas", r"# arenas allocated current\s*="),
                       ("py_allocated", r"# bytes in allocated blocks\s*="),
                       ("py_available", r"# bytes in available blocks\s*="),
                       ("py_unused_pools", r"unused pools \* \d+ bytes\s*=")):
        match = re.search(label + r"\s*([\d,]+)", text)
        if match:
            found[key] = int(match.group(1).replace(",", ""))
    return found


def sqlite_memory():
    try:
        lib = ctypes.CDLL("libsqlite3.so.0")
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        return {"sqlite": lib.sqlite3_memory_used()}
    except OSError:
        return {}


def smaps():
    # Resident bytes by kind of mapping: the brk heap (the main thread's malloc arena), other
    # threads' malloc arenas (anonymous maps that start on a 64 MiB boundary), the rest of
    # the anonymous maps (Python's object arenas, large malloc blocks, the session history's
    # ring), files.
    kinds = collections.Counter()
    kind = "file"
    with open("/proc/self/smaps") as maps:
        for line in maps:
            head = line.split()
            if not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else ""
                if name == "/dev/zero":  # shared anonymous maps (the session history's ring)
                    name = ""
                start = int(head[0].split("-")[0], 16)
                kind = "heap" if name == "[heap]" else (
                    "threads" if start % (64 << 20) == 0 else "anon") if not name else (
                    "stack" if name.startswith("[") else "file")
            elif head[0] == "Rss:":
                kinds[kind] += int(head[1]) * 1024
    return {f"rss_{key}": value for key, value in kinds.items()}


def histories():
    sizes = {}
    for obj in gc.get_objects():
        if type(obj).__name__ == "SessionHistory":
            sizes["history_ends"] = sizes.get("history_ends", 0) + len(obj._ends)
            sizes["history_blocked"] = sizes.get("history_blocked", 0) + len(obj._blocked)
    return sizes


def holders(objects, name, sample=20):
    # What refers to a few objects of the type that grew most: the leak's owner, usually.
    chosen = [obj for obj in objects if type(obj).__qualname__ == name][-sample:]
    found = collections.Counter()
    for obj in chosen:
        for referrer in gc.get_referrers(obj):
            if referrer is not objects and referrer is not chosen:
                found[type(referrer).__module__ + "." + type(referrer).__qualname__] += 1
    return found.most_common(5)


def dump(signum, frame):
    objects = gc.get_objects()
    types = collections.Counter(type(obj).__qualname__ for obj in objects)
    growth = (types - types_before[0]).most_common(8)
    types_before[0] = types
    held = {name: [types[name], holders(objects, name)] for name in watched}
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = -1
    row = {"t": round(time.monotonic(), 1), "objects": len(objects), "tasks": tasks,
           "py_blocks": sys.getallocatedblocks(), **smaps(), **mallinfo(), **arenas(),
           **pymalloc(), **sqlite_memory(),
           **histories(), "grew": growth, "watched": held,
           "most": types.most_common(12)}
    del objects
    with open(path, "a") as out:
        out.write(json.dumps(row) + "\n")
        if trace:
            snapshot = tracemalloc.take_snapshot()
            out.write(f"--- traced {tracemalloc.get_traced_memory()}\n")
            for stat in snapshot.compare_to(previous[0], "traceback")[:8]:
                out.write(f"{stat}\n")
                for line in stat.traceback.format()[-6:]:
                    out.write(f"    {line}\n")
            previous[0] = snapshot

signal.signal(signal.SIGUSR1, dump)
from rtc.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Sample:
    label: str
    at: float
    rss_mb: float
    fds: int
    rooms: int
    connections: int
    sessions: int


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        return dict(json.load(response))


def sample(label: str, pid: int, port: int, started: float) -> Sample:
    health = healthz(port)
    return Sample(
        label, time.monotonic() - started, rss_mb(pid), open_fds(pid),
        health["rooms"], health["connections"], health["sessions"],
    )


def start_server(data_dir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[str], int]:
    serve = ["serve", "--port", "0", "--data-dir", str(data_dir), "--log-level", "WARNING",
             "--room-grace", str(args.room_grace)]
    if args.debug or args.memory:
        mode = "trace" if args.debug else "plain"
        command = [sys.executable, "-c", _DEBUG_WRAPPER, str(data_dir / "debug.txt"), mode,
                   ",".join(args.watch), *serve]
    else:
        command = [sys.executable, "-m", "rtc", *serve]
    log = (data_dir / "server.log").open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    output = ""
    while "Events:" not in output:  # bounded by the deadline
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit(f"the server did not start:\n{output}")
        output += process.stdout.readline()
    match = re.search(r"rtc listening on http://127\.0\.0\.1:(\d+)", output)
    assert match is not None, output
    return process, int(match.group(1))


def run(args: argparse.Namespace) -> None:
    probing = args.debug or args.memory
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="rtc-soak-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    server, port = start_server(data_dir, args)
    pid = server.pid
    print(f"server pid {pid} on 127.0.0.1:{port}, data in {data_dir}", flush=True)
    samples: list[Sample] = []
    load = None
    try:
        started = time.monotonic()
        samples.append(sample("idle", pid, port, started))
        load = subprocess.Popen(
            [sys.executable, __file__, "--load", "--port", str(port),
             "--connections", str(args.connections), "--rooms", str(args.rooms),
             "--duration", str(args.duration), "--interval", str(args.interval),
             "--churn", str(args.churn), "--seed", str(args.seed),
             "--edit-share", str(args.edit_share), "--room-life", str(args.room_life),
             *(["--bounded"] if args.bounded else []),
             *(["--reconnect"] if args.reconnect else [])],
            stdout=subprocess.PIPE, text=True,
        )
        assert load.stdout is not None
        line = load.stdout.readline()  # "warm" once every connection has joined
        if not line.startswith("warm"):
            raise SystemExit(f"the load generator failed: {line!r}")
        print(f"load warm: {line.strip()}", flush=True)
        warm = time.monotonic()
        samples.append(sample("start", pid, port, started))
        marks = {"middle": warm + args.duration / 2}
        if probing:
            os.kill(pid, signal.SIGUSR1)
        next_sample = time.monotonic() + args.sample
        while load.poll() is None:  # the load generator stops itself after --duration
            now = time.monotonic()
            if "middle" in marks and now >= marks["middle"]:
                del marks["middle"]
                samples.append(sample("middle", pid, port, started))
                if probing:
                    os.kill(pid, signal.SIGUSR1)
            elif now >= next_sample:
                samples.append(sample("", pid, port, started))
                next_sample = now + args.sample
                if args.memory:
                    os.kill(pid, signal.SIGUSR1)
            time.sleep(0.5)
            print_row(samples[-1], header=len(samples) == 2)
        samples.append(sample("end", pid, port, started))
        summary = load.stdout.read()
        if probing:
            os.kill(pid, signal.SIGUSR1)
        # Rooms unload after their grace; the server should be back to about idle.
        time.sleep(args.room_grace + 3)
        samples.append(sample("drained", pid, port, started))
        if probing:
            os.kill(pid, signal.SIGUSR1)
            time.sleep(1)
    finally:
        if load is not None and load.poll() is None:
            load.terminate()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    print_table(samples)
    print(summary.strip())
    print(f"server exit code {server.returncode}; log {data_dir / 'server.log'}")
    if probing:
        print(f"debug snapshots: {data_dir / 'debug.txt'}")


_last_printed: list[int] = [0]


def print_row(row: Sample, *, header: bool = False) -> None:
    if id(row) == _last_printed[0]:
        return
    _last_printed[0] = id(row)
    if header:
        print(f"{'':8} {'t (s)':>7} {'RSS MB':>8} {'fds':>6} {'rooms':>6} {'conns':>6} "
              f"{'sessions':>8}", flush=True)
    print(f"{row.label:8} {row.at:7.1f} {row.rss_mb:8.1f} {row.fds:6d} {row.rooms:6d} "
          f"{row.connections:6d} {row.sessions:8d}", flush=True)


def print_table(samples: list[Sample]) -> None:
    print("\nsummary")
    print(f"{'':8} {'t (s)':>7} {'RSS MB':>8} {'fds':>6} {'rooms':>6} {'conns':>6} "
          f"{'sessions':>8}")
    for row in samples:
        if row.label:
            print(f"{row.label:8} {row.at:7.1f} {row.rss_mb:8.1f} {row.fds:6d} {row.rooms:6d} "
                  f"{row.connections:6d} {row.sessions:8d}")


# --- the load's side ---------------------------------------------------------------------


async def load(args: argparse.Namespace) -> None:
    from pycrdt import Doc, Text
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    from rtc.awareness import AwarenessEntry, encode_awareness
    from rtc.protocol import AwarenessMessage, SyncStep1, SyncStep2, SyncUpdate, decode, encode

    rng = random.Random(args.seed)
    ids = iter(range(1, 10**9))
    began = time.monotonic()
    stop_at = began + args.duration
    counts = {"sessions": 0, "edits": 0, "awareness": 0, "received": 0, "failed": 0,
              "unexpected_close": 0}
    warm = asyncio.Event()
    joined = 0

    class Client:
        """One Yjs client: its document (which holds only its own inserts: it reads
        nothing), its awareness clock and, with --bounded, what it inserted and not deleted.
        A session's own, or with --reconnect its slot's for the whole run."""

        def __init__(self, slot: int) -> None:
            self.id = next(ids)
            self.user = slot  # one user per slot; a slot's successive sessions are the same user
            self.doc: Doc[Any] = Doc(client_id=self.id)
            self.text = self.doc.get("content", type=Text)
            self.clock = 0
            self.mine: list[str] = []

        def presence(self) -> bytes:
            state = {"collaboratorInfo": {"id": self.user, "name": f"user{self.user}"},
                     "cursor": {"index": rng.randrange(1000)}}
            entry = AwarenessEntry(self.id, self.clock, json.dumps(state))
            return encode(AwarenessMessage(encode_awareness([entry])))

        def edit(self, insert: str | None) -> bytes:
            """An update: `insert` at the start; with --bounded, the previous insert deleted
            in the same transaction (as an editor replacing a word), so the document stays
            bounded."""
            before = self.doc.get_state()
            with self.doc.transaction():
                if args.bounded and self.mine:
                    previous = self.mine.pop()
                    at = str(self.text).find(previous)
                    if at >= 0:
                        del self.text[at : at + len(previous)]
                if insert is not None:
                    self.text.insert(0, insert)
                    self.mine.append(insert)
            return encode(SyncUpdate(self.doc.get_update(before)))

    async def session(slot: int, client: Client) -> None:
        """One connection: join, edit and move the cursor, then leave after a while."""
        nonlocal joined
        # With --room-life, the rooms in use are replaced every so often (new posts opened,
        # old ones left to unload), so documents are loaded and unloaded all along.
        epoch = int((time.monotonic() - began) / args.room_life) if args.room_life else 0
        room = slot % args.rooms + 1 + epoch * args.rooms
        doc = client.doc

        url = f"ws://127.0.0.1:{args.port}/rooms/1/{room}"
        async with asyncio.timeout(30):
            ws = await connect(url, compression=None, open_timeout=30, max_queue=64)
        counts["sessions"] += 1

        async def reader() -> None:
            async for data in ws:
                counts["received"] += 1
                if isinstance(data, bytes) and data[:2] == b"\x00\x00":  # sync step 1
                    message = decode(data)
                    assert isinstance(message, SyncStep1)
                    await ws.send(encode(SyncStep2(doc.get_update(message.state_vector))))

        reading = asyncio.create_task(reader())
        try:
            await ws.send(encode(SyncStep1(doc.get_state())))
            await ws.send(client.presence())
            if not warm.is_set():
                joined += 1
                if joined == args.connections:
                    warm.set()
            leave_at = time.monotonic() + rng.expovariate(1 / args.churn)
            while (now := time.monotonic()) < min(leave_at, stop_at):
                await asyncio.sleep(min(rng.expovariate(1 / args.interval),
                                        max(0.0, min(leave_at, stop_at) - now)))
                if reading.done():
                    break
                if rng.random() < args.edit_share:
                    await ws.send(client.edit(f"{client.id}:{rng.randrange(1000)} "))
                    counts["edits"] += 1
                else:
                    client.clock += 1
                    await ws.send(client.presence())
                    counts["awareness"] += 1
            if args.bounded and client.mine:
                await ws.send(client.edit(None))  # leave nothing behind: the room stays bounded
        except ConnectionClosed:
            counts["unexpected_close"] += 1
        finally:
            reading.cancel()
            try:
                async with asyncio.timeout(10):
                    await ws.close()
            except (TimeoutError, ConnectionClosed):
                pass
            if ws.close_code not in (1000, 1005, None):
                counts["unexpected_close"] += 1

    async def slot_loop(slot: int) -> None:
        # Stagger the first connections so that warm-up is not one thundering herd.
        await asyncio.sleep(slot * 0.005)
        client: Client | None = None
        while time.monotonic() < stop_at:
            if client is None or not args.reconnect:
                client = Client(slot)  # a new tab: a new Y.Doc, a new clientID
            else:
                # Past the removal the server broadcast at the last clock + 1, as y-protocols'
                # awareness re-announces itself on seeing its own removal.
                client.clock += 2
            try:
                await session(slot, client)
            except (OSError, TimeoutError, InvalidHandshake):
                counts["failed"] += 1
                await asyncio.sleep(1)

    tasks = [asyncio.create_task(slot_loop(slot)) for slot in range(args.connections)]
    await asyncio.wait_for(warm.wait(), timeout=120)
    print(f"warm {args.connections} connections in {args.rooms} rooms", flush=True)
    await asyncio.gather(*tasks)
    print("load: " + ", ".join(f"{key} {value}" for key, value in counts.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--interval", type=float, default=5.0,
                        help="mean seconds between a connection's edits or cursor moves")
    parser.add_argument("--edit-share", type=float, default=0.5,
                        help="share of actions that are edits (the rest move the cursor)")
    parser.add_argument("--churn", type=float, default=60.0,
                        help="mean seconds a connection stays before a new one replaces it")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--room-grace", type=float, default=5.0,
                        help="the server's --room-grace, in seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bounded", action="store_true",
                        help="edits replace the session's previous insert, and a leaving "
                        "session deletes its last one: documents stay bounded")
    parser.add_argument("--reconnect", action="store_true",
                        help="each connection slot keeps one Yjs client for the whole run: "
                        "its sessions after the first are that client reconnecting (same "
                        "clientID, as y-websocket's provider after a dropped connection), so "
                        "the documents' writers, and their CRDT history, stay bounded too")
    parser.add_argument("--room-life", type=float, default=0.0,
                        help="seconds after which new sessions go to a fresh set of rooms "
                        "(other posts) and the old ones empty out and unload; 0: the same "
                        "rooms throughout")
    parser.add_argument("--data-dir", help="default: a fresh temporary directory")
    parser.add_argument("--debug", action="store_true",
                        help="tracemalloc/gc/task snapshots at start, middle, end, drained")
    parser.add_argument("--memory", action="store_true",
                        help="at every sample, the server's memory by kind (brk heap, "
                        "anonymous maps, malloc in use and free, SQLite, Python blocks, "
                        "session history) and the object types that grew, to "
                        "<data-dir>/debug.txt as a JSON line")
    parser.add_argument("--watch", action="append", default=[], metavar="TYPE",
                        help="with --memory or --debug: how many objects of this type (its "
                        "qualified name, e.g. Event) are alive, and what refers to them")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        asyncio.run(load(args))
    else:
        run(args)


if __name__ == "__main__":
    main()
