"""Stream configuration: loading (TOML, JSON), errors with their line, routing as a table."""
# ruff: noqa: E501 - the routing and error tables read best one case per line

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.module_imports import imports_of
from tracks import Event, JSONValue
from tracks.sampling import session_in_sample
from tracks.streams import (
    Routing,
    Stream,
    StreamConfig,
    StreamConfigError,
    load_streams,
    streams_from_mapping,
)

EXAMPLE = """\
# Streams for the tests.
[recorders]
warehouse = "http://127.0.0.1:9000/batch"
archive = "jsonl:///var/lib/rtc/client.jsonl"

[streams.presence]
events = ["jetpack_rtc_join", "jetpack_rtc_leave", "jetpack_rtc_blocked"]
recorders = ["default", "warehouse"]

[streams.presence.props]
blog_id = "int"
post_id = "int"
session_id = "int"
wp_user_id = "int?"

[streams.client_errors]
events = ["jetpack_rtc_connection_error"]
origins = ["client"]
sample_rate = 0.5
recorders = ["archive"]
props = { blog_id = "int", post_id = "int", session_id = "int", error_code = "str" }

[streams.server_errors]
events = ["jetpack_rtc_connection_error"]
origins = ["server"]

[streams.misc]
events = ["jetpack_rtc_*"]
origins = ["server", "client"]
props = { ratio = "float", tags = "list", extra = "object", ok = "bool", label = "str" }

[streams.debug]
events = ["jetpack_rtc_debug_*"]
origins = ["client"]
sample_rate = 0
"""


@pytest.fixture
def config(tmp_path: Path) -> StreamConfig:
    path = tmp_path / "streams.toml"
    path.write_text(EXAMPLE)
    return load_streams(path)


def sampled_session(rate: float, *, inside: bool) -> int:
    return next(n for n in range(10_000) if session_in_sample(1, 2, n, rate) == inside)


IDS: dict[str, JSONValue] = {"blog_id": 1, "post_id": 2, "session_id": 3}
KEPT = sampled_session(0.5, inside=True)
DROPPED = sampled_session(0.5, inside=False)
ERROR = {"blog_id": 1, "post_id": 2, "error_code": "x"}
MISC = {"ratio": 1, "tags": [1], "extra": {"a": 1}, "ok": True, "label": "l"}


@pytest.mark.parametrize(
    ("name", "props", "origin", "expected"),
    [
        ("jetpack_rtc_join", IDS, "server", Routing(outcome="accepted", stream="presence", recorders=("default", "warehouse"))),
        ("jetpack_rtc_join", {**IDS, "wp_user_id": 7}, "server", Routing(outcome="accepted", stream="presence", recorders=("default", "warehouse"))),
        ("jetpack_rtc_join", {**IDS, "wp_user_id": "7"}, "server", Routing(outcome="rejected", stream="presence", reason="prop wp_user_id must be int")),
        ("jetpack_rtc_join", {"blog_id": 1, "post_id": 2}, "server", Routing(outcome="rejected", stream="presence", reason="missing prop session_id")),
        ("jetpack_rtc_join", {**IDS, "blog_id": True}, "server", Routing(outcome="rejected", stream="presence", reason="prop blog_id must be int")),
        ("jetpack_rtc_join", {**IDS, "blog_id": 1.5}, "server", Routing(outcome="rejected", stream="presence", reason="prop blog_id must be int")),
        # A more specific stream refuses the client; the catch-all pattern takes it.
        ("jetpack_rtc_join", IDS, "client", Routing(outcome="rejected", stream="misc", reason="missing prop ratio")),
        ("jetpack_rtc_join", {**IDS, **MISC}, "client", Routing(outcome="accepted", stream="misc", recorders=("default",))),
        ("jetpack_rtc_leave", {**IDS, **MISC, "ratio": 0.5}, "client", Routing(outcome="accepted", stream="misc", recorders=("default",))),
        ("jetpack_rtc_other", {**MISC, "ratio": "1"}, "server", Routing(outcome="rejected", stream="misc", reason="prop ratio must be float")),
        ("jetpack_rtc_other", {**MISC, "tags": {"a": 1}}, "server", Routing(outcome="rejected", stream="misc", reason="prop tags must be list")),
        ("jetpack_rtc_other", {**MISC, "extra": [1]}, "server", Routing(outcome="rejected", stream="misc", reason="prop extra must be object")),
        ("jetpack_rtc_other", {**MISC, "ok": 1}, "server", Routing(outcome="rejected", stream="misc", reason="prop ok must be bool")),
        ("jetpack_rtc_other", {**MISC, "label": 1}, "server", Routing(outcome="rejected", stream="misc", reason="prop label must be str")),
        # One name, two streams, told apart by origin.
        ("jetpack_rtc_connection_error", {**ERROR, "session_id": KEPT}, "client", Routing(outcome="accepted", stream="client_errors", recorders=("archive",))),
        ("jetpack_rtc_connection_error", {**ERROR, "session_id": DROPPED}, "client", Routing(outcome="sampled_out", stream="client_errors", reason="sampled out")),
        ("jetpack_rtc_connection_error", {"blog_id": 1}, "server", Routing(outcome="accepted", stream="server_errors", recorders=("default",))),
        ("jetpack_rtc_connection_error", {"blog_id": 1}, "client", Routing(outcome="rejected", stream="client_errors", reason="missing prop post_id")),
        # The longest prefix wins; sample_rate 0 keeps nothing.
        ("jetpack_rtc_debug_ping", IDS, "client", Routing(outcome="sampled_out", stream="debug", reason="sampled out")),
        ("jetpack_rtc_debug_ping", MISC, "server", Routing(outcome="accepted", stream="misc", recorders=("default",))),
        ("jetpack_other_thing", IDS, "server", Routing(outcome="rejected", reason="no stream accepts jetpack_other_thing")),
    ],
)  # fmt: skip
def test_route(
    config: StreamConfig, name: str, props: dict[str, JSONValue], origin: str, expected: Routing
) -> None:
    routing = config.route(Event(name, props), origin=origin)  # type: ignore[arg-type]
    assert routing == expected
    assert routing.accepted == (expected.outcome == "accepted")
    assert routing.sampled_out == (expected.outcome == "sampled_out")


def test_origin_not_allowed(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[streams.a]\nevents = ["jetpack_rtc_join"]\n')
    routing = load_streams(path).route(Event("jetpack_rtc_join", IDS), origin="client")
    assert routing == Routing(outcome="rejected", stream="a", reason="origin client not allowed")


def test_default_is_todays_behaviour() -> None:
    config = StreamConfig.default()
    for kind in ("join", "leave", "blocked", "connection_error"):
        # Server events: every one, whatever props, to the server's recorders.
        routing = config.route(Event(f"jetpack_rtc_{kind}", {}), origin="server")
        assert routing == Routing(outcome="accepted", stream="presence", recorders=("default",))
    error: dict[str, JSONValue] = {
        **IDS,
        "error_code": "connect-failed",
        "close_code": 1006,
        "wp_user_id": 7,
    }
    assert config.route(Event("jetpack_rtc_connection_error", error), origin="client") == Routing(
        outcome="accepted", stream="client_errors", recorders=("default",)
    )
    assert config.route(Event("jetpack_rtc_join", IDS), origin="client").reason == (
        "origin client not allowed"
    )
    assert config.route(
        Event("jetpack_rtc_connection_error", {**error, "close_code": "x"}), origin="client"
    ).reason == ("prop close_code must be int")
    assert config.recorder_urls() == {}
    other = StreamConfig.default(prefix="acme_rtc_")
    assert other.route(Event("acme_rtc_join", {}), origin="server").accepted


def test_client_view_has_no_recorder_urls(config: StreamConfig) -> None:
    view = config.client_view()
    assert view == {
        "sampling": {"hash": "fnv1a-32", "key": "{blog_id}:{post_id}:{session_id}"},
        "streams": {
            "client_errors": {
                "events": ["jetpack_rtc_connection_error"],
                "props": {"blog_id": "int", "post_id": "int", "session_id": "int", "error_code": "str"},
                "sample_rate": 0.5,
            },
            "misc": {
                "events": ["jetpack_rtc_*"],
                "props": {"ratio": "float", "tags": "list", "extra": "object", "ok": "bool", "label": "str"},
                "sample_rate": 1.0,
            },
            "debug": {"events": ["jetpack_rtc_debug_*"], "props": {}, "sample_rate": 0.0},
        },
    }  # fmt: skip
    assert "http" not in json.dumps(view)
    assert config.recorder_urls() == {
        "warehouse": "http://127.0.0.1:9000/batch",
        "archive": "jsonl:///var/lib/rtc/client.jsonl",
    }


def test_json_is_the_same_document(tmp_path: Path, config: StreamConfig) -> None:
    import tomllib

    path = tmp_path / "streams.json"
    path.write_text(json.dumps(tomllib.loads(EXAMPLE), indent=2))
    assert load_streams(path) == config


BAD_TOML = [
    # (file text, line, what the message says after "path:line: ")
    ('[streams.a]\nevents = ["jetpack_rtc_join"\n', 2, "invalid TOML: Unclosed array"),
    ("[streams.a]\nevents = [\"x\"]\nsample_rate = = 1\n", 3, "invalid TOML: Invalid value"),
    ("", 1, "streams: at least one [streams.NAME] table is needed"),
    ('[stream.a]\nevents = ["jetpack_rtc_join"]\n', 1, "stream: unknown key (expected recorders, streams)"),
    ('\n[streams.a]\nevents = []\n', 3, "streams.a.events: must not be empty, got []"),
    ('[streams.a]\norigins = ["client"]\n', 1, "streams.a.events: required"),
    ('[streams.a]\nevents = [\n  "jetpack_rtc_join",\n  "Bad-Name",\n]\n', 4, "streams.a.events[1]: bad event pattern 'Bad-Name' (an event name or prefix*)"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nsample_rate = 1.5\n', 3, "streams.a.sample_rate: must be at most 1.0, got 1.5"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nsample_rate = -0.1\n', 3, "streams.a.sample_rate: must be at least 0.0, got -0.1"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nsample_rate = "all"\n', 3, "streams.a.sample_rate: must be a number, got 'all'"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nsample_rate = true\n', 3, "streams.a.sample_rate: must be a number, got True"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nsample_rate = nan\n', 3, "streams.a.sample_rate: must be a finite number, got nan"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\norigins = ["browser"]\n', 3, "streams.a.origins[0]: must be 'server' or 'client', got 'browser'"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nsample = 1\n', 3, "streams.a.sample: unknown key (expected events, sample_rate, recorders, origins, props)"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\n\n[streams.a.props]\nblog_id = "int"\npost_id = "integer"\n', 6, "streams.a.props.post_id: unknown type 'integer' (expected int, str, bool, float, list, object, optionally with ?)"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nprops = { blog_id = "number" }\n', 3, "streams.a.props.blog_id: unknown type 'number'"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nprops.blog_id = 1\n', 3, "streams.a.props.blog_id: must be a type name such as 'int' or 'int?', got 1"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\nrecorders = ["default", "warehouse"]\n', 3, "streams.a.recorders[1]: unknown recorder 'warehouse' (define it under [recorders], or use 'default')"),
    ('[recorders]\nwarehouse = "ftp://x"\n[streams.a]\nevents = ["jetpack_rtc_join"]\n', 2, "recorders.warehouse: bad recorder URL 'ftp://x'"),
    ('[recorders]\nwarehouse = "http://"\n[streams.a]\nevents = ["jetpack_rtc_join"]\n', 2, "recorders.warehouse: bad recorder URL 'http://': needs a host"),
    ('[recorders]\ndefault = "none"\n[streams.a]\nevents = ["jetpack_rtc_join"]\n', 2, "recorders.default: 'default' is the server's own recorders"),
    ('[streams.a]\nevents = ["jetpack_rtc_join"]\n[streams.b]\nevents = ["jetpack_rtc_leave",\n "jetpack_rtc_join"]\n', 5, "streams.b.events[1]: jetpack_rtc_join from server is in streams a and b"),
    ('[streams."a b"]\nevents = ["jetpack_rtc_join"]\n', 1, 'streams."a b": a stream name holds only letters, digits, _ and -'),
    ('[streams]\na = 1\n', 2, "streams.a: must be a table, got 1"),
    # Several problems: the one nearest the top of the file.
    ('[streams.b]\nevents = ["jetpack_rtc_join"]\nsample_rate = 2\n[streams.a]\nevents = []\n', 3, "streams.b.sample_rate: must be at most 1.0, got 2"),
    # The line finder follows TOML, not lines that look alike: the comment on line 5 names
    # the clashing event too, and so does a string in another table.
    ('[recorders]\nx = "jsonl:///x \\"jetpack_rtc_join\\""\n[streams.a]\nevents = ["jetpack_rtc_join"]\n[streams.b]\nrecorders = [\n  "default", # "jetpack_rtc_join"\n]\nevents = [\n  "jetpack_rtc_leave", # "jetpack_rtc_join"\n  "jetpack_rtc_join",\n]\n', 11, "streams.b.events[1]: jetpack_rtc_join from server is in streams a and b"),
    ('[streams.a]\r\nevents = [\r\n  """jetpack_rtc_join""",\r\n  \'\'\'\r\n[streams.b]\'\'\',\r\n]\r\n', 4, "streams.a.events[1]: bad event pattern"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "message"), BAD_TOML)
def test_bad_toml_names_file_line_and_reason(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "streams.toml"
    path.write_bytes(text.encode())
    with pytest.raises(StreamConfigError) as caught:
        load_streams(path)
    assert str(caught.value).startswith(f"{path}:{line}: {message}")
    assert caught.value.line == line
    assert caught.value.path == path
    assert str(caught.value).endswith(caught.value.reason)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('{"streams": {"a": {"events": ["jetpack_rtc_join"],}}}', 1, "invalid JSON: Expecting property name enclosed in double quotes"),
        ('{\n "streams": {\n  "a": {\n   "events": ["x"],\n   "props": {"n": "num"}\n  }\n }\n}', 5, "streams.a.props.n: unknown type 'num'"),
        ('{\n "streams": {\n  "a": {\n   "events": ["x"],\n   "origins": []\n  }\n }\n}', 5, "streams.a.origins: must not be empty, got []"),
        ("[1, 2]", 1, "the configuration must be a table, got [1, 2]"),
        # A value that spells a key is not that key; json.loads keeps the last of two members.
        ('{"streams": {"a": {\n "events": ["props"],\n "props": {},\n "props": {\n  "x": "num"}}}}', 5, "streams.a.props.x: unknown type 'num'"),
    ],
)  # fmt: skip
def test_bad_json_names_file_line_and_reason(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "streams.json"
    path.write_text(text)
    with pytest.raises(StreamConfigError) as caught:
        load_streams(path)
    assert str(caught.value).startswith(f"{path}:{line}: {message}")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StreamConfigError, match="cannot read the stream configuration"):
        load_streams(tmp_path / "nope.toml")


def test_from_mapping_and_constructor_validate() -> None:
    config = streams_from_mapping({"streams": {"a": {"events": ["jetpack_rtc_*"]}}})
    assert config.route(Event("jetpack_rtc_join", {}), origin="server").accepted
    with pytest.raises(StreamConfigError) as caught:
        streams_from_mapping({"streams": {"a": {"events": ["a_b_c"], "recorders": ["x"]}}})
    assert caught.value.key == ("streams", "a", "recorders", 0)
    assert str(caught.value).startswith("streams.a.recorders[0]: unknown recorder 'x'")
    with pytest.raises(StreamConfigError, match=r"^streams\.a\.sample_rate: must be a number"):
        streams_from_mapping({"streams": {"a": {"events": ["a_b_c"], "sample_rate": "1"}}})
    with pytest.raises(
        StreamConfigError, match="a_b_c from client is in streams a and b"
    ) as caught:
        StreamConfig(
            streams=(
                Stream(name="a", events=("a_b_c",), origins=frozenset({"client", "server"})),
                Stream(name="b", events=("x", "a_b_c"), origins=frozenset({"client"})),
            )
        )
    assert caught.value.key == ("streams", "b", "events", 1)


def test_routing_is_pure() -> None:
    # Deciding where events go needs neither the file format nor its validator.
    imported = imports_of("tracks.streams.routing")
    assert {name for name in imported if name.startswith("tracks.")} <= {
        "tracks.event",
        "tracks.sampling",
    }
    io_or_format = {"pydantic", "tomllib", "anyio", "asyncio", "sqlite3", "httpx", "socket"}
    assert not {name for name in imported if name.split(".")[0] in io_or_format}
