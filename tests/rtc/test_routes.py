"""The URL layout."""

import pytest

from rtc.http.routes import ApiRoute, FeedRoute, HttpError, RoomRoute, StaticRoute, route
from rtc.room import RoomKey


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
                                  "/demo/node_modules/yjs/package.json", "/demo/.env"])
def test_unknown_paths_are_404(path: str) -> None:
    with pytest.raises(HttpError) as raised:
        route(path)
    assert raised.value.status == 404


def test_http_endpoints() -> None:
    assert route("/healthz") == ApiRoute("healthz")
    assert route("/metrics") == ApiRoute("metrics")
    assert route("/api/rooms") == ApiRoute("rooms")
    assert route("/api/rooms/3/4") == ApiRoute("room", RoomKey(3, 4))
    assert route("/events?blog_id=3&post_id=4") == FeedRoute(RoomKey(3, 4))
    assert route("/") == StaticRoute("index.html")
    assert route("/demo") == StaticRoute("index.html")
    assert route("/demo/dist/app.js") == StaticRoute("dist/app.js")
