"""Room tokens, origins and server limits, over real sockets."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rtc.auth import (
    AuthenticationError,
    ForbiddenError,
    RevokedError,
    Scope,
    issue,
    issue_scoped,
    verify,
    verify_scoped,
)
from rtc.ids import RoomKey
from rtc.protocol import SyncStep1
from rtc.revocations import Revocations
from rtc.tokens import TokenChecker

from .clients import TIMEOUT, RawClient, serve_rtc

SECRET = "correct horse battery staple, 32+ bytes long"
DAY = 86_400
READ = {"Authorization": f"Bearer {issue_scoped(SECRET, scope='read', ttl_seconds=3600)}"}
ADMIN = {"Authorization": f"Bearer {issue_scoped(SECRET, scope='admin', ttl_seconds=3600)}"}


def token(blog_id: int = 7, post_id: int | None = 42, user_id: int = 101, ttl: float = 3600,
          secret: str = SECRET, name: str | None = "Ada", now: float | None = None) -> str:
    return issue(secret, blog_id=blog_id, post_id=post_id, user_id=user_id, ttl_seconds=ttl,
                 name=name, now=now)


def forged(**claims: Any) -> str:
    """A token signed with the secret whose claims are exactly these (on top of a room's)."""
    issued = int(time.time())
    base: dict[str, Any] = {"blog_id": 7, "post_id": 42, "user_id": 101, "iat": issued,
                            "exp": issued + 3600}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def without(name: str) -> str:
    issued = int(time.time())
    claims = {"blog_id": 7, "post_id": 42, "user_id": 101, "iat": issued, "exp": issued + 60}
    del claims[name]
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("value", "error", "detail"),
    [
        (None, AuthenticationError, "no token"),
        ("not.a.jwt", AuthenticationError, "invalid token"),
        (token(secret="another secret that is long enough!!"), AuthenticationError, "invalid"),
        (token(ttl=1e-9), AuthenticationError, "expired"),
        (token(post_id=43), ForbiddenError, "post 43"),
        (token(blog_id=8, post_id=None), ForbiddenError, "blog 8"),
        # Item 9: tokens that live (nearly) forever, or whose exp is not an integer.
        (forged(exp=32503680000), AuthenticationError, "longer than the server allows"),
        (forged(exp=1e18), AuthenticationError, "'exp' must be an integer"),
        (forged(exp=str(int(time.time()) + 60)), AuthenticationError, "'exp' must be an integer"),
        (forged(exp=float(int(time.time()) + 60)), AuthenticationError, "'exp' must be an int"),
        (forged(iat=str(int(time.time()))), AuthenticationError, "'iat' must be an integer"),
        (without("iat"), AuthenticationError, "iat"),
        (forged(iat=int(time.time()) + 600), AuthenticationError, "in the future"),
        # Item 1(a) and 11: ids that do not fit a 64-bit column, or are not ASCII digits.
        (forged(user_id=2**70), AuthenticationError, "'user_id' must be a positive integer"),
        (forged(user_id=2**63), AuthenticationError, "'user_id' must be a positive integer"),
        (forged(post_id="²"), AuthenticationError, "'post_id' must be a positive integer"),
        # ARABIC-INDIC DIGIT SEVEN: a digit to str.isdigit(), not an id.
        (forged(blog_id="\u0667"), AuthenticationError, "'blog_id' must be a positive integer"),
        # An API token is not a room token.
        (forged(scope="admin"), AuthenticationError, "scoped token"),
        (issue_scoped(SECRET, scope="admin", ttl_seconds=60), AuthenticationError, "blog_id"),
    ],
)
def test_verify_refuses_with_the_right_error(value: str | None, error: type, detail: str) -> None:
    with pytest.raises(error, match=detail):
        verify(value, SECRET, RoomKey(7, 42), now=time.time() + 1, max_ttl=DAY)


def test_the_lifetime_cap_counts_from_iat() -> None:
    issued = time.time() - 2 * DAY  # issued two days ago, for three: alive, but too long-lived
    old = token(ttl=3 * DAY, now=issued)
    with pytest.raises(AuthenticationError, match="longer than the server allows"):
        verify(old, SECRET, RoomKey(7, 42), max_ttl=DAY)
    assert verify(old, SECRET, RoomKey(7, 42), max_ttl=3 * DAY).user_id == 101
    assert verify(token(ttl=DAY), SECRET, RoomKey(7, 42), max_ttl=DAY).user_id == 101


def test_scoped_tokens() -> None:
    assert verify_scoped(issue_scoped(SECRET, scope="read", ttl_seconds=900), SECRET) is Scope.READ
    admin = verify_scoped(issue_scoped(SECRET, scope=Scope.ADMIN, ttl_seconds=900), SECRET)
    assert admin.covers(Scope.READ)
    assert admin.covers(Scope.ADMIN)
    assert not Scope.READ.covers(Scope.ADMIN)
    for bad, detail in [
        (SECRET, "invalid token"),  # the secret itself is no credential
        (token(), "scope"),  # a room token is no API token
        (issue_scoped(SECRET, scope="read", ttl_seconds=2 * DAY), "longer than"),
        (jwt.encode({"scope": "root", "iat": int(time.time()), "exp": int(time.time()) + 60},
                    SECRET, algorithm="HS256"), "'read' or 'admin'"),
    ]:
        with pytest.raises(AuthenticationError, match=detail):
            verify_scoped(bad, SECRET, max_ttl=DAY)


def test_a_kick_revokes_tokens_issued_up_to_its_second(tmp_path: Path) -> None:
    clock = [1_000_000.5]
    path = tmp_path / "revocations.json"
    checker = TokenChecker(SECRET, max_ttl=DAY, clock=lambda: clock[0],
                           revocations=Revocations(path, keep_seconds=DAY))
    before = token(now=clock[0] - 10)
    blog_wide = token(post_id=None, now=clock[0] - 10)
    checker.revoke(RoomKey(7, 42), 101)
    for refused in (before, blog_wide, token(now=clock[0])):  # the same second: refused too
        with pytest.raises(RevokedError):
            checker(refused, RoomKey(7, 42))
    assert checker(blog_wide, RoomKey(7, 43)).user_id == 101  # other rooms: untouched
    assert checker(token(user_id=102, now=clock[0] - 10), RoomKey(7, 42)).user_id == 102
    clock[0] += 1
    assert checker(token(now=clock[0]), RoomKey(7, 42)).user_id == 101  # issued after it
    # Persisted: a restarted server still refuses the old token.
    reloaded = TokenChecker(SECRET, max_ttl=DAY, clock=lambda: clock[0],
                            revocations=Revocations(path, keep_seconds=DAY))
    with pytest.raises(RevokedError):
        reloaded(before, RoomKey(7, 42))
    assert json.loads(path.read_text()) == {"7/42": {"101": 1_000_000}}
    # Forgotten once no token issued before it can be alive (max_ttl later), on the next kick.
    clock[0] += DAY + 1
    reloaded.revoke(RoomKey(1, 2), 3)
    assert json.loads(path.read_text()) == {"1/2": {"3": int(clock[0])}}


def test_a_damaged_revocation_file_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "revocations.json"
    for content in ("[", '{"7/42": {"101": "soon"}}', '{"x": {}}', "[]"):
        path.write_text(content)
        with pytest.raises(ValueError, match="unreadable revocations"):
            Revocations(path, keep_seconds=DAY)


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
            async with httpx.AsyncClient(timeout=TIMEOUT, headers=READ) as client:
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
async def test_a_kick_revokes_the_users_tokens_for_the_room(tmp_path: Path) -> None:
    mallory_token = token(user_id=5)
    async with serve_rtc(tmp_path, secret=SECRET) as rtc:
        url = f"{rtc.server.http_url}/api/rooms/7/42/kick"
        async with (
            RawClient.connect(f"{rtc.room_url()}?token={mallory_token}") as mallory,
            RawClient.connect(f"{rtc.room_url()}?token={token(user_id=6)}") as ada,
            httpx.AsyncClient(timeout=TIMEOUT) as client,
        ):
            await mallory.join(555, user=5)
            await ada.join(666, user=6)
            await mallory.barrier()
            await ada.barrier()
            unauthorised = await client.post(url, json={"user_id": 5})
            assert unauthorised.status_code == 401
            # The signing secret is no credential: it never travels over the wire.
            old_style = await client.post(url, json={"user_id": 5},
                                          headers={"Authorization": f"Bearer {SECRET}"})
            assert old_style.status_code == 401
            read_only = await client.post(url, json={"user_id": 5}, headers=READ)
            assert read_only.status_code == 403
            bad = await client.post(url, content=b"{", headers=ADMIN)
            assert bad.status_code == 400
            kicked = await client.post(url, json={"user_id": 5}, headers=ADMIN)
            assert kicked.status_code == 200
            assert kicked.json() == {"blog_id": 7, "post_id": 42, "user_id": 5, "closed": 1}
            assert await mallory.closed() == (4403, "revoked")
            await ada.barrier()  # everyone else carries on
            # The same token is refused from now on (it was let in again at once before).
            async with RawClient.connect(f"{rtc.room_url()}?token={mallory_token}") as again:
                with contextlib.suppress(ConnectionClosed):
                    await again.join(555, user=5)
                assert await again.closed() == (4403, "revoked")
            # Another post of the blog is another room: not revoked.
            async with RawClient.connect(
                f"{rtc.room_url(7, 43)}?token={token(user_id=5, post_id=None)}"
            ) as elsewhere:
                await elsewhere.join(557, user=5)
                await elsewhere.barrier()
            assert (await client.get(url, headers=ADMIN)).status_code == 405
            assert (await client.post(f"{rtc.server.http_url}/api/rooms")).status_code == 405
    # Persisted: a restarted server refuses the old token and admits one issued after the kick.
    async with serve_rtc(tmp_path, secret=SECRET) as rtc:
        async with RawClient.connect(f"{rtc.room_url()}?token={mallory_token}") as again:
            with contextlib.suppress(ConnectionClosed):
                await again.join(555, user=5)
            assert await again.closed() == (4403, "revoked")
        fresh = token(user_id=5, now=time.time() + 1)  # issued after the kick's second
        async with RawClient.connect(f"{rtc.room_url()}?token={fresh}") as welcome:
            await welcome.join(556, user=5)
            await welcome.barrier()


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad",
    [
        forged(exp=32503680000),  # the year 3000
        forged(exp=10**18),
        forged(exp=1e18),
        forged(exp="32503680000"),
        without("iat"),
        forged(user_id=2**70),
        forged(post_id="²"),
    ],
)
async def test_tokens_that_live_too_long_or_lie_about_ids_are_refused(
    tmp_path: Path, bad: str
) -> None:
    async with serve_rtc(tmp_path, secret=SECRET, max_token_ttl=3600) as rtc:
        async with RawClient.connect(f"{rtc.room_url()}?token={bad}") as intruder:
            with contextlib.suppress(ConnectionClosed):
                await intruder.join(666, user=101)
            assert await intruder.closed() == (4401, "authentication-failed")
        await rtc.wait_event("connection_error", error_code="authentication-failed")
        assert rtc.events("join") == []


def test_rtc_token_prints_scoped_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    from rtc.__main__ import main

    assert main(["token", "--secret", SECRET, "--scope", "admin"]) == 0
    printed = capsys.readouterr().out.strip()
    assert verify_scoped(printed, SECRET, max_ttl=900) is Scope.ADMIN  # 15 minutes by default
    assert main(["token", "--secret", SECRET, "--scope", "read", "--ttl", "2d"]) == 0
    with pytest.raises(AuthenticationError, match="longer than"):
        verify_scoped(capsys.readouterr().out.strip(), SECRET, max_ttl=DAY)
    assert main(["token", "--secret", SECRET, "--scope", "read", "--user-id", "1"]) == 2
    assert main(["token", "--secret", SECRET, "--blog-id", "7", "--post-id", "*",
                 "--user-id", "5"]) == 0
    grant = verify(capsys.readouterr().out.strip(), SECRET, RoomKey(7, 9), max_ttl=3600)
    assert (grant.post_id, grant.user_id) == (None, 5)
