"""What the browser tests share besides their fixtures (those are in conftest.py): where
Chromium is, how it is launched, the timeouts, and reading a stopped server's events."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Locator, Page, WebSocket, expect

from tests.rtc.processes import ServerProcess
from tracks import Event, read_events

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "FACTOR",
    "ROOT",
    "TIMEOUT",
    "TIMEOUT_MS",
    "VIEWPORT",
    "ServerFactory",
    "missing",
    "stop",
]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("RTC_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FACTOR = float(os.environ.get("RTC_TEST_TIMEOUT_FACTOR", "1"))
TIMEOUT = 10.0 * FACTOR
TIMEOUT_MS = TIMEOUT * 1000
VIEWPORT = {"width": 1000, "height": 720}

# The `start_server` fixture: `async with start_server(*args) as server`.
ServerFactory = Callable[..., AbstractAsyncContextManager[ServerProcess]]


def missing(what: str, how: str) -> None:
    """Skip (fail under CI) for a missing prerequisite."""
    # `make test` installs both; under CI a missing one is a set-up bug, not a reason to skip.
    message = f"{what} is missing: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


async def stop(server: ServerProcess) -> list[Event]:
    """SIGTERM, a clean exit (it flushes the recorders), then the events it stored."""
    assert await server.terminate() == 0, "rtc serve did not exit cleanly"
    return list(read_events(server.data_dir / "events.sqlite"))


@dataclass
class Tab:
    page: Page
    room_sockets: list[WebSocket]
    errors: list[str]

    async def read_session_id(self) -> int:
        text = await self.page.get_by_test_id("session-id").inner_text()
        assert text.isdigit(), f"session id not shown: {text!r}"
        return int(text)


async def open_tab(
    context: BrowserContext,
    server: ServerProcess,
    *,
    user: int,
    name: str,
    blog: int = 1,
    post: int = 42,
    synced: bool = True,
) -> Tab:
    page = await context.new_page()
    tab = Tab(page=page, room_sockets=[], errors=[])
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    # Every WebSocket the page opens to a room: a reconnect loop would show up here.
    page.on(
        "websocket",
        lambda socket: tab.room_sockets.append(socket) if "/rooms/" in socket.url else None,
    )
    await page.goto(f"{server.http_url}/?blog={blog}&post={post}&user={user}&name={name}")
    if synced:
        await expect(page.get_by_test_id("status")).to_have_text("synced")
    return tab


def roster_session(page: Page, session_id: int) -> Locator:
    return page.locator(f'[data-testid="roster-session"][data-session-id="{session_id}"]')
