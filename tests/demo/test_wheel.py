"""The package as a Python user gets it: `python -m build`, a fresh virtualenv, `rtc serve`.

The sdist and the wheel are built once per session, from this checkout, and the wheel is
installed into a new venv (its dependencies from the package index). The server runs from that
venv, in a directory outside the checkout, with no Node on its PATH, and two headless Chromium
tabs go through the two-tab checks against the pages it carries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import BrowserContext, expect

from tests.demo.harness import (
    FACTOR,
    ROOT,
    TIMEOUT,
    TIMEOUT_MS,
    missing,
    open_tab,
    roster_session,
    stop,
)
from tests.rtc.processes import ServerProcess, rtc_process

pytestmark = [pytest.mark.browser, pytest.mark.slow]

expect.set_options(timeout=TIMEOUT_MS)

# Building (npm ci, setuptools in an isolated env) and installing (pip) take tens of seconds.
BUILD_TIMEOUT = 300 * FACTOR
PAGES = ("index.html", "stats.html", "session.html", "style.css", "dist/app.js")


@dataclass(frozen=True)
class Distributions:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    venv: Path
    path: str  # a PATH with the venv's scripts and no Node

    @property
    def rtc(self) -> Path:
        return self.venv / "bin" / "rtc"


def run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> Distributions:
    if shutil.which("npm") is None:
        missing("npm", "install Node.js 20 and npm (the package build bundles the pages)")
    out = tmp_path_factory.mktemp("dist")
    # The sdist first, then the wheel from the unpacked sdist: what `pip install` of an sdist does.
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Distributions(sdist=sdist, wheel=wheel)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory, distributions: Distributions) -> Installed:
    home = tmp_path_factory.mktemp("installed")
    venv = home / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=home)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         str(distributions.wheel)], cwd=home)
    path = str(venv / "bin")
    assert shutil.which("node", path=path) is None
    assert shutil.which("npm", path=path) is None
    return Installed(venv=venv, path=path)


def test_the_sdist_carries_the_page_sources_and_the_bundle(distributions: Distributions) -> None:
    with tarfile.open(distributions.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {
        "setup.py",
        "demo/package.json",
        "demo/package-lock.json",
        "demo/src/main.js",
        "demo/index.html",
        "demo/stats.html",
        "demo/session.html",
        "demo/style.css",
        "demo/dist/app.js",
    } <= names
    assert not any(name.startswith("demo/node_modules") for name in names)


def test_the_wheel_carries_the_built_pages(distributions: Distributions) -> None:
    with zipfile.ZipFile(distributions.wheel) as wheel:
        names = set(wheel.namelist())
        bundle = wheel.read("rtc/pages/dist/app.js")
    assert {f"rtc/pages/{page}" for page in PAGES} <= names
    assert not any(name.startswith("demo/") for name in names)
    assert b"WebsocketProvider" in bundle  # y-websocket, bundled


def test_a_build_without_npm_fails_and_says_why(tmp_path: Path) -> None:
    # A checkout's files (no bundle, no node_modules), built where no npm is on the PATH.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("rtc", "tracks"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "demo", source / "demo",
                    ignore=shutil.ignore_patterns("node_modules", "dist"))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "out"), "."],
        cwd=source, env={**os.environ, "PATH": str(empty)}, capture_output=True, text=True,
        timeout=BUILD_TIMEOUT, check=False,
    )
    assert result.returncode != 0
    assert "building rtc-presence needs npm" in result.stdout + result.stderr
    assert not list((tmp_path / "out").glob("*.whl"))


def installed_server(
    installed: Installed, home: Path, *args: str
) -> AbstractAsyncContextManager[ServerProcess]:
    """`rtc serve --port 0` of the installed package, run in `home`, without Node on its PATH."""
    return rtc_process(
        home / "data", *args, rtc=[str(installed.rtc)], cwd=home,
        env={"PATH": installed.path, "PYTHONPATH": ""},
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_the_installed_wheel_serves_a_working_demo(
    installed: Installed, context: BrowserContext, tmp_path: Path
) -> None:
    home = tmp_path / "elsewhere"  # outside the checkout: nothing of it can be imported
    home.mkdir()
    origin = run([str(installed.venv / "bin" / "python"), "-c", "import rtc; print(rtc.__file__)"],
                 cwd=home, env={**os.environ, "PATH": installed.path})
    assert Path(origin.strip()).is_relative_to(installed.venv)

    async with installed_server(installed, home, "--max-contributors", "2") as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as client:
            for path in ("/stats", "/sessions/1/42/5", "/demo/dist/app.js", "/demo/style.css"):
                response = await client.get(path)
                assert response.status_code == 200, path

        ada = await open_tab(context, server, user=7, name="Ada")
        grace = await open_tab(context, server, user=8, name="Grace")

        # Typing in one tab appears in the other.
        await ada.page.get_by_test_id("editor").click()
        await ada.page.keyboard.type("Hello from an installed wheel.")
        await expect(grace.page.get_by_test_id("editor")).to_have_value(
            "Hello from an installed wheel."
        )

        # Each tab shows its own session id, and both rosters list both users.
        ada_session, grace_session = await ada.read_session_id(), await grace.read_session_id()
        assert ada_session != grace_session
        for tab, own in ((ada, ada_session), (grace, grace_session)):
            roster = tab.page.get_by_test_id("contributor")
            await expect(roster).to_have_count(2)
            await expect(roster.filter(has_text="Ada")).to_have_attribute("data-user-id", "7")
            await expect(roster.filter(has_text="Grace")).to_have_attribute("data-user-id", "8")
            await expect(roster_session(tab.page, own)).to_contain_text("you")

        # A third user is turned away, and the page says so.
        linus = await open_tab(context, server, user=9, name="Linus", synced=False)
        notice = linus.page.get_by_test_id("blocked-notice")
        await expect(notice).to_be_visible()
        await expect(notice).to_contain_text("This post already has 2 people editing.")
        await expect(linus.page.get_by_test_id("status")).to_have_text(
            "closed 4429 connection-limit-exceeded"
        )
        await expect(linus.page.get_by_test_id("editor")).to_have_value("")
        assert ada.errors == grace.errors == linus.errors == []

        events = await stop(server)
    blocked = [event for event in events if event.name == "jetpack_rtc_blocked"]
    assert [event.props["wp_user_id"] for event in blocked] == [9]
