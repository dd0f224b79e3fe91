"""A demo folder whose bundle was never built answers with a page saying how to build it."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import httpx

from rtc import RtcServer, ServerConfig

from .clients import TIMEOUT

DEMO = Path(__file__).resolve().parents[2] / "demo"


async def test_an_unbuilt_demo_says_how_to_build_it(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy(DEMO / "index.html", demo / "index.html")  # the page, without dist/app.js
    config = ServerConfig(data_dir=tmp_path / "data", port=0, demo_dir=demo, rollup_interval=0)
    async with RtcServer(config) as server, httpx.AsyncClient() as client:
        with anyio.fail_after(TIMEOUT):
            page = await client.get(f"{server.http_url}/")
            (demo / "dist").mkdir()
            (demo / "dist" / "app.js").write_text("// built")
            built = await client.get(f"{server.http_url}/")
    assert page.status_code == 503
    assert "not built" in page.text
    assert "make setup" in page.text
    assert built.status_code == 200
    assert "/demo/dist/app.js" in built.text
