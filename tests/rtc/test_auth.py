"""Room tokens, origins and server limits, over real sockets."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rtc.auth import AuthenticationError, ForbiddenError, issue, verify
from rtc.ids import RoomKey
from rtc.protocol import SyncStep1

from .clients import TIMEOUT, RawClient, serve_rtc

SECRET = "correct horse battery staple, 32+ bytes long"


def token(blog_id: int = 7, post_id: int | None = 42, user_id: int = 101, ttl: float = 3600,
          secret: str = SECRET, name: str | None = "Ada") -> str:
    return issue(secret, blog_id=blog_id, post_id=post_id, user_id=user_id, ttl_seconds=ttl,
                 name=name)


@pytest.mark.parametrize(
    ("value", "error", "detail"),
    [
        (None, AuthenticationError, "no token"),
        ("not.a.jwt", AuthenticationError, "invalid token"),
        (token(secret="another secret that is long enough!!"), AuthenticationError, "invalid"),
        (token(ttl=1e-9), AuthenticationError, "expired"),
        (token(post_id=43), ForbiddenError, "post 43"),
        (token(blog_id=8, post_id=None), ForbiddenError, "blog 8"),
    ],
)
def test_verify_refuses_with_the_right_error(value: str | None, error: type, detail: str) -> None:
    with pytest.raises(error, match=detail):
        verify(value, SECRET, RoomKey(7, 42), now=time.time() + 1)


def test_a_blog_wide_token_opens_every_post() -> None:
    grant = verify(token(post_id=None), SECRET, RoomKey(7, 99))
    assert (grant.user_id, grant.name, grant.post_id) == (101, "Ada", None)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "close", "error_code"),
    [
        ("", (4401, "authentication-failed"), "authentication-failed"),
        ("?token=garbage", (4401, "authentication-failed"), "authentication-failed"),
        (f"?token={token(post_id=1)}", (4403, "forbidden"), "forbidden"),
    ],
)
async def test_refused_tokens_see_nothing_and_are_recorded_once(
    tmp_path: Path, query: str, close: tuple[int, str], error_code: str
) -> None:
    async with serve_rtc(tmp_path, secret=SECRET) as rtc:
        async with RawClient.connect(rtc.room_url() + query) as intruder:
            with contextlib.suppress(ConnectionClosed):  # the server may close first
                await intruder.join(666, user=6)
            assert await intruder.closed() == close
        error = await rtc.wait_event("connection_error", error_code=error_code)
        assert error.props["close_code"] == close[0]
        assert "session_id" not in error.props
        await rtc.server.flush()
        assert len(rtc.events("connection_error")) == 1
        assert rtc.events("join") == []


@pytest.mark.slow
async def test_the_token_user_is_the_roster_identity(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, secret=SECRET) as rtc:
        async with RawClient.connect(f"{rtc.room_url()}?token={token(user_id=101)}") as ada:
            await ada.join(111, user=999)  # awareness claims another user: ignored
            join = await rtc.wait_event("join", session_id=111)
            assert join.props["wp_user_id"] == 101
            assert join.props["contributors"] == (101,)
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                metrics = (await client.get(f"{rtc.server.http_url}/metrics")).text
            assert 'rtc_notes_total{what="awareness-user-mismatch"} 1.0' in metrics


@pytest.mark.slow
async def test_an_expiring_token_closes_its_connection(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, secret=SECRET) as rtc:
        async with RawClient.connect(f"{rtc.room_url()}?token={token(ttl=1.5)}") as ada:
            await ada.join(111, user=101)
            await ada.barrier()
            assert await ada.closed() == (4401, "token-expired")
        leave = await rtc.wait_event("leave", session_id=111)
        assert leave.props["clean"] is True
        assert rtc.events("connection_error") == []


@pytest.mark.slow
async def test_origins(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, allowed_origins=("https://wp.example",)) as rtc:
        with pytest.raises(InvalidStatus) as refused:
            await connect(rtc.room_url(), origin="https://evil.example")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as no_origin:
            await connect(rtc.room_url())
        assert no_origin.value.response.status_code == 403
        async with RawClient.connect(rtc.room_url(), origin="https://wp.example") as ok:
            await ok.join(1, user=1)
            await ok.barrier()
    async with serve_rtc(tmp_path, allowed_origins=("https://wp.example",), secret=SECRET) as rtc:
        async with RawClient.connect(f"{rtc.room_url()}?token={token()}") as app:  # no Origin
            await app.join(1, user=101)
            await app.barrier()


@pytest.mark.slow
async def test_a_flooding_connection_is_closed_with_1008(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, max_messages_per_second=5, message_burst=20) as rtc:
        async with RawClient.connect(rtc.room_url()) as flood:
            await flood.join(666, user=6)
            for _ in range(40):
                await flood.send(SyncStep1(b"\x00"))
            assert await flood.closed() == (1008, "rate-limited")
        error = await rtc.wait_event("connection_error", session_id=666)
        assert error.props["error_code"] == "rate-limited"


@pytest.mark.slow
async def test_connection_and_room_caps(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, max_connections_per_ip=2, max_rooms=1) as rtc:
        async with RawClient.connect(rtc.room_url()) as first:
            await first.join(1, user=1)
            await first.barrier()
            async with RawClient.connect(rtc.room_url(7, 43)) as other_room:
                assert await other_room.closed() == (4503, "too-many-rooms")
            busy = await rtc.wait_event("connection_error", error_code="server-busy")
            assert (busy.props["post_id"], busy.props["close_code"]) == (43, 4503)
            async with RawClient.connect(rtc.room_url()) as second:
                await second.join(2, user=2)
                await second.barrier()
                with pytest.raises(InvalidStatus) as refused:
                    await connect(rtc.room_url())
                assert refused.value.response.status_code == 429
    async with serve_rtc(tmp_path, max_connections=1) as rtc:
        async with RawClient.connect(rtc.room_url()) as only:
            await only.join(1, user=1)
            await only.barrier()
            with pytest.raises(InvalidStatus) as busy:
                await connect(rtc.room_url())
            assert busy.value.response.status_code == 503


@pytest.mark.slow
async def test_an_admin_can_revoke_a_users_sessions(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, secret=SECRET) as rtc:
        url = f"{rtc.server.http_url}/api/rooms/7/42/kick"
        async with (
            RawClient.connect(f"{rtc.room_url()}?token={token(user_id=5)}") as mallory,
            RawClient.connect(f"{rtc.room_url()}?token={token(user_id=6)}") as ada,
            httpx.AsyncClient(timeout=TIMEOUT) as client,
        ):
            await mallory.join(555, user=5)
            await ada.join(666, user=6)
            await mallory.barrier()
            await ada.barrier()
            unauthorised = await client.post(url, json={"user_id": 5})
            assert unauthorised.status_code == 401
            admin = {"Authorization": f"Bearer {SECRET}"}
            bad = await client.post(url, content=b"{", headers=admin)
            assert bad.status_code == 400
            kicked = await client.post(url, json={"user_id": 5}, headers=admin)
            assert kicked.status_code == 200
            assert kicked.json() == {"blog_id": 7, "post_id": 42, "user_id": 5, "closed": 1}
            assert await mallory.closed() == (4403, "revoked")
            await ada.barrier()  # everyone else carries on
            assert (await client.get(url)).status_code == 405
            assert (await client.post(f"{rtc.server.http_url}/api/rooms")).status_code == 405
