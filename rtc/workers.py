"""`rtc serve --workers N`: a supervisor that runs N worker processes on one listening
socket, and the worker's side of that arrangement. Not the server: each worker is a plain
`rtc serve` (`rtc.app.RtcServer`), a cluster node of its own, started with `--workers 1`.

- **One socket, inherited.** The supervisor binds the port once (port 0 picks a free one,
  which every worker then shares) and hands the descriptor to each worker (``pass_fds``; the
  number in ``_RTC_WORKER_LISTEN_FD``), which serves on it (``serve(sock=...)``). Chosen over
  ``SO_REUSEPORT`` because the port then belongs to one process for the group's whole life:
  a connection that arrives while a worker restarts waits in the shared accept queue for the
  others instead of being reset with the dying worker's own queue; port 0 needs no second
  bind; no other process can join the port; and it behaves the same wherever ``fork``
  passes descriptors (``SO_REUSEPORT`` balances only on Linux). Every idle worker is woken
  for a new connection and the first to accept it serves it.
- **A control socket per worker** (``_RTC_WORKER_CONTROL_FD``, one end of a socketpair):
  the worker writes its start-up banner on it once it listens, so that the supervisor prints
  one banner when every worker is ready; afterwards it is the worker's lifeline: when the
  supervisor is gone (even by SIGKILL) the worker reads end-of-file and shuts down as if
  stopped, rather than serving on unsupervised.
- **Restarts.** A worker that dies is started again, with a fresh node id (``-r<n>``: the
  dead one's sessions are then reaped by the cluster, as for any lost node), after a delay
  that doubles from 0.5 s to 30 s while workers keep dying young (`Backoff`). Each restart
  is logged and counted (`Supervisor.restarts`). A worker that fails before the group ever
  started (a bad setting, Redis unreachable) stops the group: restarting would only repeat
  the error.
- **Stopping.** SIGTERM or SIGINT to the supervisor is forwarded to every worker; the
  supervisor waits ``ping_timeout + 10`` s for them, kills what is left, and exits 0 when
  every worker stopped cleanly (1 otherwise).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import anyio
from anyio.abc import Process

from rtc.config import ConfigError, ServerConfig

__all__ = [
    "Backoff",
    "Supervisor",
    "WorkerLink",
    "listening_socket",
    "supervise",
    "wait_for_stop",
]

logger = logging.getLogger(__name__)

LISTEN_FD_VARIABLE = "_RTC_WORKER_LISTEN_FD"
CONTROL_FD_VARIABLE = "_RTC_WORKER_CONTROL_FD"
_BACKLOG = 100  # asyncio's default for create_server, which each worker sets again
_MAX_READY_BYTES = 64 * 1024
STOP_GRACE = 10.0  # seconds beyond ping_timeout that workers get to stop


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """How long to wait before restarting a worker that died. Pure.

    Attributes:
        initial: the first delay, and the delay again after a worker lived `reset_after`.
        cap: the longest delay.
        reset_after: seconds of life after which a worker's death is not a crash loop.
    """

    initial: float = 0.5
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, previous: float | None, lived: float) -> float:
        """The delay before the next start, given the delay before the last (None: none
        yet) and how long the worker that died had lived."""
        if previous is None or lived >= self.reset_after:
            return self.initial
        return min(previous * 2, self.cap)


# --- the worker's side -----------------------------------------------------------------


@dataclass(frozen=True)
class WorkerLink:
    """A worker's ties to its supervisor: the listening socket and the control socket."""

    listen_fd: int
    control_fd: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerLink | None:
        """The link a supervisor set up for this process; None when not run as a worker.

        Raises:
            ConfigError: the variables are set but not descriptor numbers.
        """
        listen, control = environ.get(LISTEN_FD_VARIABLE), environ.get(CONTROL_FD_VARIABLE)
        if listen is None and control is None:
            return None
        try:
            return cls(int(listen or ""), int(control or ""))
        except ValueError:
            raise ConfigError(
                f"{LISTEN_FD_VARIABLE} and {CONTROL_FD_VARIABLE} are set by `rtc serve "
                f"--workers` for its workers, not by hand"
            ) from None

    def listening_socket(self) -> socket.socket:
        """The supervisor's listening socket (this worker's copy of the descriptor)."""
        return socket.socket(fileno=self.listen_fd)

    def ready(self, banner: Sequence[str], *, node_id: str | None) -> None:
        """Tell the supervisor this worker listens; it prints `banner` once for the group.

        A few hundred bytes into an empty socketpair: this does not block.
        """
        message = json.dumps({"banner": list(banner), "node_id": node_id}) + "\n"
        with socket.socket(fileno=os.dup(self.control_fd)) as control:
            control.sendall(message.encode())

    async def supervisor_gone(self) -> None:
        """Return when the supervisor has gone (end-of-file on the control socket: it never
        writes to it)."""
        await anyio.wait_readable(self.control_fd)


async def wait_for_stop(signals: AsyncIterator[int], link: WorkerLink | None) -> str:
    """Wait for SIGINT/SIGTERM (from `signals`) or, in a worker, for the supervisor to go;
    return what it was, for the shutdown line."""
    reason = "supervisor gone"
    async with anyio.create_task_group() as group:

        async def on_signal() -> None:
            nonlocal reason
            async for signum in signals:
                reason = signal.Signals(signum).name
                break
            group.cancel_scope.cancel()

        async def on_orphaned(link: WorkerLink) -> None:
            await link.supervisor_gone()
            group.cancel_scope.cancel()

        group.start_soon(on_signal)
        if link is not None:
            group.start_soon(on_orphaned, link)
    return reason


# --- the supervisor ----------------------------------------------------------------------


def listening_socket(host: str, port: int) -> socket.socket:
    """One listening TCP socket on `host` (its first address) and `port` (0: a free one).

    Raises:
        OSError: the address does not resolve, or the port is taken.
    """
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address, family=family, backlog=_BACKLOG)


def base_node_id(config: ServerConfig) -> str:
    """What the workers' node ids start with: `--node-id`, else host and supervisor pid."""
    return config.node_id or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class _Slot:
    """One worker position (1..N) and the process that fills it now."""

    index: int
    base: str
    starts: int = 0
    process: Process | None = None
    node_id: str = ""
    ready: bool = False
    delay: float | None = None
    stop_codes: list[int] = field(default_factory=list)

    def next_node_id(self) -> str:
        node = f"{self.base}-w{self.index}"
        return node if self.starts == 0 else f"{node}-r{self.starts}"


class Supervisor:
    """Runs `config.workers` copies of `rtc serve` on one listening socket.

    Args:
        config: the group's configuration (printed in the banner: host, workers, ping
            timeout for the stop).
        argv: the command line it was given (`serve ...`): each worker runs it again with
            `--workers 1 --node-id <base>-w<k>` added (later flags win).
        environ: the environment the workers get (plus the two descriptor variables).
        out: where the one banner goes.
        backoff: the restart delays.
        python: the interpreter the workers run under.
    """

    def __init__(
        self,
        config: ServerConfig,
        argv: Sequence[str],
        *,
        environ: Mapping[str, str],
        out: TextIO = sys.stdout,
        backoff: Backoff | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.restarts = 0
        self._argv = list(argv)
        self._environ = {
            name: value for name, value in environ.items()
            if name not in (LISTEN_FD_VARIABLE, CONTROL_FD_VARIABLE)
        }
        self._out = out
        self._backoff = backoff or Backoff()
        self._python = python
        base = base_node_id(config)
        self._slots = [_Slot(index, base) for index in range(1, config.workers + 1)]
        self._stop = anyio.Event()
        self._stop_signal: signal.Signals = signal.SIGTERM
        self._started = False
        self._failure: int | None = None
        self._banner: tuple[list[str], str | None] | None = None
        self._ended = 0
        self._all_ended = anyio.Event()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (0: every worker stopped cleanly)."""
        try:
            listening = listening_socket(self.config.host, self.config.port)
        except OSError as error:
            print(f"rtc: {error}", file=sys.stderr)
            return 1
        # The signal handlers stay for the whole life: a second signal (systemd signals the
        # whole control group, a terminal the whole process group) must not cut the stop.
        with listening, anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._watch_signals, signals)
                async with anyio.create_task_group() as slots:
                    for slot in self._slots:
                        slots.start_soon(self._keep, slot, listening.fileno())
                    slots.start_soon(self._stop_when_asked)
                outer.cancel_scope.cancel()
        if self._failure is not None:
            return self._failure
        codes = [code for slot in self._slots for code in slot.stop_codes]
        logger.info("workers stopped (exit codes %s, %d restart(s))", codes, self.restarts)
        return 0 if all(code == 0 for code in codes) else 1

    # --- stopping ----------------------------------------------------------------------

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if not self._stop.is_set():
                self._stop_signal = signal.Signals(signum)
                print(f"rtc: {self._stop_signal.name}, stopping {len(self._slots)} workers",
                      flush=True, file=self._out)
                self._stop.set()
            # later signals: already stopping (each worker got the first one)

    async def _stop_when_asked(self) -> None:
        await self._stop.wait()
        for slot in self._slots:
            self._signal(slot, self._stop_signal)
        grace = self.config.ping_timeout + STOP_GRACE
        with anyio.move_on_after(grace):
            await self._all_ended.wait()
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                logger.error("worker %d (pid %d) still running %.0f s after %s: killing it",
                             slot.index, slot.process.pid, grace, self._stop_signal.name)
                self._signal(slot, signal.SIGKILL)

    def _signal(self, slot: _Slot, signum: signal.Signals) -> None:
        process = slot.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    # --- one worker position -----------------------------------------------------------

    async def _keep(self, slot: _Slot, listen_fd: int) -> None:
        """Fill `slot` until the group stops: start a worker, restart it when it dies."""
        try:
            while not self._stop.is_set():  # one pass per worker process
                born = time.monotonic()
                code = await self._run_worker(slot, listen_fd)
                if self._stop.is_set():
                    slot.stop_codes.append(code)
                    return
                lived = time.monotonic() - born
                if not self._started:
                    logger.error(
                        "worker %d exited with %s before the group started: stopping",
                        slot.index, _describe(code),
                    )
                    self._failure = code if code > 0 else 1
                    self._stop.set()
                    return
                slot.delay = self._backoff.delay(slot.delay, lived)
                self.restarts += 1
                logger.warning(
                    "worker %d (node %s) exited with %s after %.1f s; restarting it in %.1f s "
                    "(restart %d)",
                    slot.index, slot.node_id, _describe(code), lived, slot.delay,
                    self.restarts,
                )
                with anyio.move_on_after(slot.delay):
                    await self._stop.wait()
        finally:
            self._ended += 1
            if self._ended == len(self._slots):
                self._all_ended.set()

    async def _run_worker(self, slot: _Slot, listen_fd: int) -> int:
        """Start one worker process in `slot`, and wait for it to end; its exit code."""
        ours, theirs = socket.socketpair()
        with ours:
            with theirs:
                slot.node_id = slot.next_node_id()
                slot.ready = False
                process = await anyio.open_process(
                    [self._python, "-m", "rtc", *self._argv,
                     "--workers", "1", "--node-id", slot.node_id],
                    stdin=None, stdout=None, stderr=None,
                    env={**self._environ, LISTEN_FD_VARIABLE: str(listen_fd),
                         CONTROL_FD_VARIABLE: str(theirs.fileno())},
                    pass_fds=(listen_fd, theirs.fileno()),
                )
            slot.process = process
            slot.starts += 1
            logger.info("worker %d started: pid %d, node %s", slot.index, process.pid,
                        slot.node_id)
            if self._stop.is_set():  # stopped while it was being started
                self._signal(slot, self._stop_signal)
            async with process, anyio.create_task_group() as group:
                group.start_soon(self._await_ready, slot, ours)
                code = await process.wait()
                group.cancel_scope.cancel()
        return code

    async def _await_ready(self, slot: _Slot, control: socket.socket) -> None:
        """Read the worker's one ready message (its banner); end-of-file if it died first."""
        assert slot.process is not None
        control.setblocking(False)
        received = b""
        while b"\n" not in received and len(received) < _MAX_READY_BYTES:
            await anyio.wait_readable(control)
            try:
                chunk = control.recv(_MAX_READY_BYTES)
            except BlockingIOError:
                continue
            if not chunk:
                return
            received += chunk
        try:
            message = json.loads(received.partition(b"\n")[0])
            banner = [str(line) for line in message["banner"]]
            node_id = message.get("node_id")
        except (ValueError, KeyError, TypeError):
            logger.error("worker %d sent an unreadable ready message", slot.index)
            return
        slot.ready = True
        if self._started:
            logger.info("worker %d restarted and ready: pid %d, node %s (%d restart(s) so far)",
                        slot.index, slot.process.pid, slot.node_id, self.restarts)
            return
        logger.info("worker %d ready: pid %d, node %s", slot.index, slot.process.pid,
                    slot.node_id)
        if self._banner is None:
            self._banner = (banner, node_id if isinstance(node_id, str) else None)
        if all(other.ready for other in self._slots) and not self._stop.is_set():
            self._started = True
            # One write: whoever reads the output sees the banner whole.
            print("\n".join(self._group_banner()), file=self._out, flush=True)

    def _group_banner(self) -> list[str]:
        """The first ready worker's banner, told for the group: a Workers line before the
        Events lines, and the node line naming every worker."""
        assert self._banner is not None
        banner, node_id = self._banner
        ids = ", ".join(slot.node_id for slot in self._slots)
        workers = (f"  Workers:   {len(self._slots)} processes sharing the port: {ids} "
                   f"(supervisor pid {os.getpid()})")
        lines: list[str] = []
        for line in banner:
            if workers not in lines and (line.lstrip().startswith("Events:") or
                                         line.lstrip().startswith("WARNING")):
                lines.append(workers)
            if node_id is not None and f"node {node_id} on" in line:
                line = line.replace(f"node {node_id}", f"nodes {ids}")
            lines.append(line)
        if workers not in lines:
            lines.append(workers)
        return lines


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"status {code}"


def supervise(config: ServerConfig, argv: Sequence[str], *, environ: Mapping[str, str]) -> int:
    """Run the supervisor of `config.workers` workers to the end; the exit status."""
    return anyio.run(Supervisor(config, argv, environ=environ).run)
