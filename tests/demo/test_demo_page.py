"""The demo page in a real headless Chromium against a real `rtc serve` subprocess.

Two pages on one room, as a person would test it with two tabs. Every wait is a Playwright
`expect` or a bounded read; the event store is read after the server has flushed it on SIGTERM.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Locator, Page, expect

from tests.demo.harness import (
    ARTIFACTS,
    FACTOR,
    TIMEOUT_MS,
    VIEWPORT,
    ServerFactory,
    Tab,
    open_tab,
    roster_session,
    stop,
)
from tracks import Event

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# Issue 4: a closed tab leaves the other tab's roster "within a couple of seconds".
LEAVE_WITHIN_MS = 2000 * FACTOR


def feed_item(page: Page, name: str, session_id: int) -> Locator:
    return page.locator(
        f'[data-testid="feed-item"][data-name="{name}"][data-session-id="{session_id}"]'
    )


def named(events: list[Event], name: str) -> list[Event]:
    return [event for event in events if event.name == name]


async def save_two_tab_screenshot(context: BrowserContext, left: Tab, right: Tab) -> Path:
    """Both tabs side by side in one PNG, composed by the browser itself (no image library)."""
    shots = [base64.b64encode(await tab.page.screenshot()).decode() for tab in (left, right)]
    titles = [await tab.page.title() for tab in (left, right)]
    sheet = await context.new_page()
    await sheet.set_viewport_size({"width": 2 * VIEWPORT["width"] + 48, "height": 600})
    figures = "".join(
        f"<figure><figcaption>Tab {index}: {title}</figcaption>"
        f'<img src="data:image/png;base64,{shot}"></figure>'
        for index, (title, shot) in enumerate(zip(titles, shots, strict=True), start=1)
    )
    await sheet.set_content(
        "<style>body{margin:0;padding:16px;background:#50575e;display:flex;gap:16px;"
        "font:600 15px system-ui,sans-serif;color:#fff}figure{margin:0}"
        "figcaption{margin-bottom:8px}img{display:block;border-radius:6px}</style>" + figures
    )
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "two-tabs.png"
    await sheet.screenshot(path=str(path), full_page=True)
    await sheet.close()
    return path


async def test_typing_in_one_tab_appears_in_the_other(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        ada = await open_tab(context, server, user=7, name="Ada")
        grace = await open_tab(context, server, user=8, name="Grace")

        await ada.page.get_by_test_id("editor").click()
        await ada.page.keyboard.type("Hello from Ada.\nSecond line")
        await expect(grace.page.get_by_test_id("editor")).to_have_value(
            "Hello from Ada.\nSecond line"
        )

        # Grace edits in the middle while Ada's caret sits at the end: Ada's caret must stay there.
        await grace.page.get_by_test_id("editor").click()
        await grace.page.keyboard.press("Control+Home")
        await grace.page.keyboard.type(">> ")
        await expect(ada.page.get_by_test_id("editor")).to_have_value(
            ">> Hello from Ada.\nSecond line"
        )
        await ada.page.keyboard.type("!")
        await expect(grace.page.get_by_test_id("editor")).to_have_value(
            ">> Hello from Ada.\nSecond line!"
        )

        # Remote cursors: each tab draws the other's caret, labelled with the other's name.
        await expect(ada.page.locator('.remote-caret[data-name="Grace"]')).to_have_count(1)
        await expect(grace.page.locator('.remote-caret[data-name="Ada"]')).to_have_count(1)
        assert ada.errors == grace.errors == []


async def test_roster_shows_both_users_and_drops_a_closed_tab(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        ada = await open_tab(context, server, user=7, name="Ada")
        grace = await open_tab(context, server, user=8, name="Grace")
        ada_session, grace_session = await ada.read_session_id(), await grace.read_session_id()

        for tab, own in ((ada, ada_session), (grace, grace_session)):
            roster = tab.page.get_by_test_id("contributor")
            await expect(roster).to_have_count(2)
            await expect(roster.filter(has_text="Ada")).to_have_attribute("data-user-id", "7")
            await expect(roster.filter(has_text="Grace")).to_have_attribute("data-user-id", "8")
            await expect(roster_session(tab.page, ada_session)).to_have_count(1)
            await expect(roster_session(tab.page, grace_session)).to_have_count(1)
            await expect(roster_session(tab.page, own)).to_contain_text("you")
            # The page's roster (awareness) agrees with the server's (GET /api/rooms/1/42).
            await expect(tab.page.get_by_test_id("server-roster")).to_contain_text(
                "2 contributors, 2 sessions"
            )

        await ada.page.get_by_test_id("editor").click()
        await ada.page.keyboard.type("Ada: two tabs, one post.")
        await expect(grace.page.get_by_test_id("editor")).to_have_value("Ada: two tabs, one post.")
        await grace.page.get_by_test_id("editor").click()
        await grace.page.keyboard.press("Control+End")
        await grace.page.keyboard.type("\nGrace: and each tab its own session.")
        await expect(ada.page.get_by_test_id("editor")).to_have_value(
            "Ada: two tabs, one post.\nGrace: and each tab its own session."
        )
        await expect(ada.page.locator('.remote-caret[data-name="Grace"]')).to_have_count(1)
        await expect(feed_item(grace.page, "jetpack_rtc_join", grace_session)).to_have_count(1)
        shot = await save_two_tab_screenshot(context, ada, grace)
        assert shot.stat().st_size > 0

        await ada.page.close()
        await expect(grace.page.get_by_test_id("contributor")).to_have_count(
            1, timeout=LEAVE_WITHIN_MS
        )
        await expect(roster_session(grace.page, ada_session)).to_have_count(0)
        await expect(feed_item(grace.page, "jetpack_rtc_leave", ada_session)).to_have_count(1)


async def test_session_ids_differ_and_each_has_a_recorded_join(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        ada = await open_tab(context, server, user=7, name="Ada")
        grace = await open_tab(context, server, user=8, name="Grace")
        ada_session, grace_session = await ada.read_session_id(), await grace.read_session_id()
        assert ada_session != grace_session
        # Session id = the Yjs awareness clientID of the tab's document.
        assert await ada.page.evaluate("window.rtcDemo.doc.clientID") == ada_session

        # Recorded, and pushed live to both feeds.
        for tab in (ada, grace):
            await expect(feed_item(tab.page, "jetpack_rtc_join", ada_session)).to_have_count(1)
            await expect(feed_item(tab.page, "jetpack_rtc_join", grace_session)).to_have_count(1)

        events = await stop(server)
        joins = {event.props["session_id"]: event for event in named(events, "jetpack_rtc_join")}
        assert set(joins) == {ada_session, grace_session}
        assert joins[ada_session].props["wp_user_id"] == 7
        assert joins[grace_session].props["wp_user_id"] == 8
        assert list(joins[grace_session].props["contributors"]) == [7, 8]


async def test_reload_shows_a_new_session_and_records_a_new_join(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        ada = await open_tab(context, server, user=7, name="Ada")
        before = await ada.read_session_id()
        await expect(feed_item(ada.page, "jetpack_rtc_join", before)).to_have_count(1)

        await ada.page.reload()
        await expect(ada.page.get_by_test_id("status")).to_have_text("synced")
        after = await ada.read_session_id()
        assert after != before
        await expect(feed_item(ada.page, "jetpack_rtc_join", after)).to_have_count(1)
        await expect(roster_session(ada.page, after)).to_contain_text("you")

        events = await stop(server)
        joins = [event.props["session_id"] for event in named(events, "jetpack_rtc_join")]
        assert joins == [before, after]


async def wait_past_reconnect_backoff(tab: Tab) -> dict[str, object]:
    """A barrier for "it did not reconnect": resolves after y-websocket's own retry timer.

    On a close, y-websocket schedules its reconnect with `setTimeout(setupWS, backoff)`,
    backoff <= `provider.maxBackoffTime`, before it emits the close we react to. A timer
    scheduled after that with `maxBackoffTime` fires after it, so by then any reconnect attempt
    has been made (Playwright's `websocket` event included).
    """
    return await tab.page.evaluate(
        """() => new Promise((resolve) => setTimeout(() => resolve({
            socket: window.rtcDemo.provider.ws !== null,
            shouldConnect: window.rtcDemo.provider.shouldConnect,
            closes: window.rtcDemo.closes,
        }), window.rtcDemo.provider.maxBackoffTime))"""
    )


async def test_full_room_blocks_the_second_user_once(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server("--max-contributors", "1") as server:
        ada = await open_tab(context, server, user=7, name="Ada")
        await ada.page.get_by_test_id("editor").fill("Ada's draft")
        ada_session = await ada.read_session_id()
        await expect(feed_item(ada.page, "jetpack_rtc_join", ada_session)).to_have_count(1)
        grace = await open_tab(context, server, user=8, name="Grace", synced=False)

        notice = grace.page.get_by_test_id("blocked-notice")
        await expect(notice).to_be_visible()
        await expect(notice).to_contain_text("This post already has 1 person editing.")
        await expect(grace.page.get_by_test_id("status")).to_have_text(
            "closed 4429 connection-limit-exceeded"
        )
        grace_session = await grace.read_session_id()
        ARTIFACTS.mkdir(exist_ok=True)
        await grace.page.screenshot(path=str(ARTIFACTS / "blocked.png"))

        state = await wait_past_reconnect_backoff(grace)
        assert state == {
            "socket": False,
            "shouldConnect": False,
            "closes": [{"code": 4429, "reason": "connection-limit-exceeded"}],
        }
        assert len(grace.room_sockets) == 1
        # Turned away before admission: Grace never received the document.
        await expect(grace.page.get_by_test_id("editor")).to_have_value("")
        await expect(grace.page.get_by_test_id("editor")).not_to_be_editable()
        await expect(ada.page.get_by_test_id("contributor")).to_have_count(1)
        await expect(feed_item(ada.page, "jetpack_rtc_blocked", grace_session)).to_have_count(1)

        events = await stop(server)
        blocked = named(events, "jetpack_rtc_blocked")
        assert len(blocked) == 1
        props = blocked[0].props
        assert props["session_id"] == grace_session
        assert props["wp_user_id"] == 8
        assert list(props["contributors"]) == [7]
        assert props["limit"] == 1
        assert props["limit_kind"] == "contributors"
        joins = [event.props["session_id"] for event in named(events, "jetpack_rtc_join")]
        assert joins == [ada_session]
        assert named(events, "jetpack_rtc_connection_error") == []


async def test_try_again_retries_once_and_is_blocked_again(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server("--max-contributors", "1") as server:
        await open_tab(context, server, user=7, name="Ada")
        grace = await open_tab(context, server, user=8, name="Grace", synced=False)
        notice = grace.page.get_by_test_id("blocked-notice")
        await expect(notice).to_be_visible()

        await grace.page.get_by_test_id("try-again").click()
        await grace.page.wait_for_function("window.rtcDemo.closes.length === 2", timeout=TIMEOUT_MS)
        await expect(grace.page.get_by_test_id("status")).to_have_text(
            "closed 4429 connection-limit-exceeded"
        )
        await expect(notice).to_be_visible()
        state = await wait_past_reconnect_backoff(grace)
        assert state["closes"] == [{"code": 4429, "reason": "connection-limit-exceeded"}] * 2
        assert state["shouldConnect"] is False
        assert len(grace.room_sockets) == 2

        events = await stop(server)
        # Same session retrying: still one blocked event (issue 3, item 11).
        assert len(named(events, "jetpack_rtc_blocked")) == 1


async def test_without_a_query_each_tab_is_a_different_random_user(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        first, second = await context.new_page(), await context.new_page()
        await first.goto(f"{server.http_url}/")
        await second.goto(f"{server.http_url}/demo")
        for page in (first, second):
            await expect(page.get_by_test_id("status")).to_have_text("synced")
            await expect(page.get_by_test_id("contributor")).to_have_count(2)
        users = [await page.input_value('input[name="user"]') for page in (first, second)]
        assert users[0] != users[1]
        # The made-up user is put in the address bar, so a reload keeps it.
        assert f"user={users[0]}" in first.url
        await first.reload()
        await expect(first.get_by_test_id("status")).to_have_text("synced")
        assert await first.input_value('input[name="user"]') == users[0]


async def test_changing_the_room_in_the_form_reconnects(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        ada = await open_tab(context, server, user=7, name="Ada")
        grace = await open_tab(context, server, user=8, name="Grace", post=43)
        before = await ada.read_session_id()

        form = ada.page.get_by_test_id("identity-form")
        await form.locator('input[name="post"]').fill("43")
        await form.locator('input[name="name"]').fill("Ada L.")
        await ada.page.get_by_test_id("reconnect").click()

        await expect(ada.page.get_by_test_id("room")).to_have_text("blog 1 · post 43")
        await expect(ada.page.get_by_test_id("status")).to_have_text("synced")
        after = await ada.read_session_id()
        assert after != before
        assert "post=43" in ada.page.url
        roster = grace.page.get_by_test_id("contributor")
        await expect(roster.filter(has_text="Ada L.")).to_have_count(1)
        await expect(feed_item(grace.page, "jetpack_rtc_join", after)).to_have_count(1)
        # The feed now shows post 43's events only: the old room's join is not there.
        await expect(feed_item(ada.page, "jetpack_rtc_join", after)).to_have_count(1)
        await expect(feed_item(ada.page, "jetpack_rtc_join", before)).to_have_count(0)

        events = await stop(server)
        joins = named(events, "jetpack_rtc_join")
        rooms = {(e.props["post_id"], e.props["session_id"]) for e in joins}
        assert (42, before) in rooms
        assert (43, after) in rooms
        leaves = [e.props["session_id"] for e in named(events, "jetpack_rtc_leave")]
        assert before in leaves
