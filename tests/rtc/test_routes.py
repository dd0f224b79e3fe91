"""The URL layout."""

import pytest

from rtc.http.errors import HttpError
from rtc.http.routes import (
    CaptureBlog,
    FeedRoute,
    Health,
    Ingest,
    Kick,
    MetricsText,
    OpenApiDocument,
    Page,
    RoomList,
    RoomRoute,
    Roster,
    SessionTimeline,
    Streams,
    allowed,
    route,
)
from rtc.ids import RoomKey


def test_room_paths() -> None:
    assert route("/rooms/7/42") == RoomRoute(RoomKey(7, 42))
    assert route("/rooms/7/42?post_type=page&token=abc") == RoomRoute(RoomKey(7, 42), "page", "abc")


@pytest.mark.parametrize("path", ["/rooms/0/1", "/rooms/-1/2", "/rooms/a/2", "/rooms/1/01",
                                  "/api/rooms/1/x", "/events?blog_id=1",
                                  "/rooms/1/99999999999999999999"])
def test_bad_ids_are_400(path: str) -> None:
    with pytest.raises(HttpError) as raised:
        route(path)
    assert raised.value.status == 400


@pytest.mark.parametrize("path", ["/nope", "/rooms/1", "/rooms/1/2/3", "/demo/../secret",
                                  "/demo/node_modules/yjs/package.json", "/demo/.env",
                                  "/demo/%00", "/demo/a%0Ab.js", "/demo/" + "a" * 256,
                                  "/demo/" + "%C3%A9" * 128])
def test_unknown_paths_are_404(path: str) -> None:
    with pytest.raises(HttpError) as raised:
        route(path)
    assert raised.value.status == 404


def test_http_endpoints() -> None:
    assert route("/healthz") == Health()
    assert route("/metrics") == MetricsText()
    assert route("/openapi.json") == OpenApiDocument()
    assert route("/api/rooms") == RoomList()
    assert route("/api/rooms/3/4") == Roster(RoomKey(3, 4))
    assert route("/api/rooms/3/4/kick") == Kick(RoomKey(3, 4))
    assert route("/api/streams?blog_id=5") == Streams(5)
    assert route("/api/streams") == Streams(None)
    assert route("/api/sessions/3/4/0") == SessionTimeline(RoomKey(3, 4), 0)
    assert route("/events?blog_id=3&post_id=4") == FeedRoute(RoomKey(3, 4))
    assert route("/events?blog_id=3&post_id=4&token=t") == FeedRoute(RoomKey(3, 4), "t")
    assert route("/demo/" + "a" * 255) == Page("a" * 255)
    assert route("/") == Page("index.html")
    assert route("/demo") == Page("index.html")
    assert route("/demo/dist/app.js") == Page("dist/app.js")
    assert route("/sessions/3/4/99") == Page("session.html")


@pytest.mark.parametrize(
    "path",
    ["/api/streams?blog_id=0", "/api/capture/x", "/api/sessions/1/2/-1",
     "/api/sessions/1/2/4294967296", "/rooms/9223372036854775808/1",
     "/api/sessions/1/1/%C2%B9", "/api/streams?blog_id=%C2%B2", "/events?blog_id=²&post_id=1"],
)
def test_ids_out_of_range_are_400(path: str) -> None:
    with pytest.raises(HttpError) as raised:
        route(path)
    assert raised.value.status == 400


def test_each_route_names_its_methods() -> None:
    allowed(Kick(RoomKey(1, 2)), "POST")
    allowed(Ingest(), "OPTIONS")
    allowed(CaptureBlog(3), "PUT")
    with pytest.raises(HttpError) as raised:
        allowed(Kick(RoomKey(1, 2)), "GET")
    assert raised.value.status == 405
    assert raised.value.headers == {"Allow": "POST"}
    with pytest.raises(HttpError) as raised:
        allowed(Health(), "DELETE")
    assert raised.value.headers == {"Allow": "GET"}
