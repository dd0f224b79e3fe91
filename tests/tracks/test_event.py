"""Event validation and its JSON form. No event loop needed."""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracks import Event, EventError
from tracks.event import now_ms


def test_defaults_are_set_at_creation() -> None:
    before = time.time_ns() // 1_000_000
    event = Event("jetpack_rtc_join", {"blog_id": 1})
    after = time.time_ns() // 1_000_000
    assert uuid.UUID(event.event_id).version == 4
    assert isinstance(event.ts, int)
    assert before <= event.ts <= after
    assert Event("jetpack_rtc_join", {}).event_id != event.event_id


def test_now_ms_is_whole_milliseconds_of_the_wall_clock() -> None:
    before = time.time_ns()
    now = now_ms()
    after = time.time_ns()
    assert type(now) is int
    assert before // 1_000_000 <= now <= after // 1_000_000


def test_caller_ids_and_ts_are_kept() -> None:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "room/1/session/2/join"))
    event = Event("jetpack_rtc_join", {}, ts=123, event_id=event_id)
    assert (event.ts, event.event_id) == (123, event_id)


def test_event_id_is_normalised() -> None:
    event = Event("jetpack_rtc_join", {}, event_id="{12345678-1234-5678-1234-567812345678}")
    assert event.event_id == "12345678-1234-5678-1234-567812345678"


def test_none_values_are_dropped() -> None:
    event = Event("jetpack_rtc_join", {"blog_id": 1, "wp_user_id": None})
    assert dict(event.props) == {"blog_id": 1}
    assert "wp_user_id" not in event.to_json()["props"]  # type: ignore[operator]


def test_event_is_immutable() -> None:
    source = {"blog_id": 1, "tags": ["a"]}
    event = Event("jetpack_rtc_join", source)
    source["blog_id"] = 2
    source["tags"].append("b")  # type: ignore[attr-defined]
    assert event.props["blog_id"] == 1
    assert event.to_json()["props"] == {"blog_id": 1, "tags": ["a"]}
    with pytest.raises(TypeError):
        event.props["blog_id"] = 3  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "jetpack_rtc_leave"  # type: ignore[misc]


def test_to_json_is_exactly_the_four_keys_of_plain_types() -> None:
    event = Event("jetpack_rtc_join", {"nested": {"list": [1, {"x": True}]}, "f": 1.5})
    data = event.to_json()
    assert list(data) == ["event_id", "name", "ts", "props"]
    assert data["props"] == {"nested": {"list": [1, {"x": True}]}, "f": 1.5}
    assert type(data["props"]["nested"]) is dict  # type: ignore[index,call-overload]
    assert type(data["props"]["nested"]["list"]) is list  # type: ignore[index,call-overload]


def test_from_json_round_trips() -> None:
    event = Event("jetpack_rtc_join", {"blog_id": 1, "nested": [1, [2]]})
    assert Event.from_json(event.to_json()) == event
    assert hash(Event.from_json(event.to_json())) == hash(event)


def test_repr_leaves_props_out() -> None:
    assert "secret" not in repr(Event("jetpack_rtc_join", {"title": "secret"}))


@pytest.mark.parametrize(
    "name",
    ["jetpack_rtc", "jetpack", "Jetpack_rtc_join", "jetpack-rtc-join", "jetpack__rtc", "", "a_b_"],
)
def test_bad_event_names_are_named(name: str) -> None:
    with pytest.raises(EventError, match="event name") as info:
        Event(name, {})
    assert repr(name) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["a_b_c", "jetpack_rtc_join", "x1_y2_z3_more_parts", "a_b_c_"])
def test_good_event_names(name: str) -> None:
    assert Event(name, {}).name == name


def test_non_string_name() -> None:
    with pytest.raises(EventError, match="must be a string"):
        Event(42, {})  # type: ignore[arg-type]


def test_prefix_is_enforced() -> None:
    assert Event("jetpack_rtc_join", {}, prefix="jetpack_rtc_").name == "jetpack_rtc_join"
    with pytest.raises(EventError, match="must start with 'jetpack_rtc_'"):
        Event("wpcom_rtc_join", {}, prefix="jetpack_rtc_")


@pytest.mark.parametrize("key", ["Blog", "1st", "a-b", "a b", "", "é"])
def test_bad_property_names_are_named(key: str) -> None:
    with pytest.raises(EventError, match="property name") as info:
        Event("jetpack_rtc_join", {key: 1})
    assert repr(key) in str(info.value)


def test_underscore_properties_are_reserved() -> None:
    with pytest.raises(EventError, match="reserved"):
        Event("jetpack_rtc_join", {"_en": "x"})


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({1, 2}, "property bad:"),
        (b"bytes", "property bad:"),
        (math.nan, "property bad:"),
        (math.inf, "property bad:"),
        (object(), "property bad:"),
        ([1, 2, {3}], "property bad[2]:"),
        ({"inner": {"deep": object()}}, "property bad.inner.deep:"),
        ({1: "x"}, "property bad:"),
    ],
)
def test_bad_values_name_their_path(value: Any, where: str) -> None:
    with pytest.raises(EventError) as info:
        Event("jetpack_rtc_join", {"bad": value})
    assert where in str(info.value)


def test_props_must_be_a_mapping() -> None:
    with pytest.raises(EventError, match="props must be a mapping"):
        Event("jetpack_rtc_join", [("a", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize("ts", [-1, 1.5, True, "1"])
def test_bad_ts(ts: Any) -> None:
    with pytest.raises(EventError, match="ts"):
        Event("jetpack_rtc_join", {}, ts=ts)


@pytest.mark.parametrize("event_id", ["nope", "", 12])
def test_bad_event_id(event_id: Any) -> None:
    with pytest.raises(EventError, match="event_id"):
        Event("jetpack_rtc_join", {}, event_id=event_id)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "a_b_c", "ts": 1, "props": {}}, "missing"),
        ({"event_id": str(uuid.uuid4()), "name": "a_b_c", "ts": 1, "props": {}, "x": 1}, "unknown"),
        ({"event_id": str(uuid.uuid4()), "name": "a_b_c", "ts": "1", "props": {}}, "ts"),
        ({"event_id": str(uuid.uuid4()), "name": "a_b_c", "ts": 1, "props": []}, "props"),
        ({"event_id": 5, "name": "a_b_c", "ts": 1, "props": {}}, "event_id"),
        ([], "object"),
    ],
)
def test_from_json_rejects_malformed(data: Any, message: str) -> None:
    with pytest.raises(EventError, match=message):
        Event.from_json(data)


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=10,
)
property_names = st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z")


@pytest.mark.slow
@given(props=st.dictionaries(property_names, json_values, max_size=5))
def test_any_json_props_round_trip(props: dict[str, Any]) -> None:
    event = Event("jetpack_rtc_join", props)
    assert Event.from_json(event.to_json()) == event
    assert set(event.props) == {key for key, value in props.items() if value is not None}
