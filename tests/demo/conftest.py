"""Fixtures of the browser tests: the built page, Debian's Chromium, one browser per module,
one context per test, and `start_server` (the `rtc serve` launcher of tests/rtc/processes.py).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, async_playwright, expect

from tests.demo.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    TIMEOUT_MS,
    VIEWPORT,
    ServerFactory,
    missing,
)
from tests.rtc.processes import ServerProcess, rtc_process

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def built_page() -> None:
    if not (ROOT / "demo" / "dist" / "app.js").exists():
        missing("demo/dist/app.js", "run `npm ci --prefix demo && npm run build --prefix demo`")


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        missing(str(CHROMIUM), "run `apt-get install -y chromium` (or `make setup-test`)")
    return CHROMIUM


@pytest.fixture
def start_server(tmp_path: Path, built_page: None) -> ServerFactory:
    """`async with start_server(*args) as server`: `rtc serve --port 0 ARGS` for the block.

    A context manager the test enters itself: the launcher owns a task group, which one task
    must enter and leave (a pytest-asyncio fixture is set up and torn down by two tasks).
    Each server gets its own data dir in tmp_path, and its log is left there.
    """
    numbers = itertools.count()

    @asynccontextmanager
    async def start(*args: str) -> AsyncIterator[ServerProcess]:
        number = next(numbers)
        server: ServerProcess | None = None
        try:
            async with rtc_process(tmp_path / f"data{number}", *args) as server:
                yield server
        finally:
            if server is not None:  # for a failing test's post-mortem
                (tmp_path / f"server{number}.log").write_text("\n".join(server.log))

    return start


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # Debian's Chromium, never a browser downloaded by `playwright install`.
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    # One context = one browser profile: its pages are tabs of one browser, like the manual test.
    context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    yield context
    await context.close()
