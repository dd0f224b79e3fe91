"""Stream configuration: which events are accepted, from whom, sampled how, recorded where.

Pure apart from `load_streams` reading its file. A file (TOML, or JSON when its name ends in
``.json``) looks like this::

    [recorders]            # optional: extra recorders by name, as open_recorder URLs
    warehouse = "http://127.0.0.1:9000/batch"

    [streams.presence]
    events = ["jetpack_rtc_join", "jetpack_rtc_leave", "jetpack_rtc_blocked"]
    sample_rate = 1.0      # fraction of sessions kept (tracks.sampling; default 1.0)
    recorders = ["default", "warehouse"]   # default ["default"]: the server's --recorder ones
    origins = ["server"]   # who may send into it: "server", "client" (default ["server"])

    [streams.presence.props]   # required props and their types
    blog_id = "int"
    post_id = "int"
    wp_user_id = "int?"        # "?": optional, but of that type when present

``events`` holds exact names or ``prefix*`` patterns. Prop types: ``int``, ``str``, ``bool``,
``float`` (an int is a float too), ``list``, ``object``; a bool is never an int. Props a
stream does not name are allowed. The JSON form is the same document as an object.

Routing an event (`StreamConfig.route`): the streams whose ``events`` take its name are
tried most specific first (an exact name, then the longest ``prefix*``); the first that
allows the event's origin takes it. That stream's props are then checked, then its
sample: the session (``blog_id``, ``post_id``, ``session_id``) is in or out for all its
events, on the server and in the browser alike. A name may be in two streams only for
different origins (the default below keeps client connection errors apart this way), so
the order of streams in the file never matters.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeAlias

from tracks.event import Event, JSONValue
from tracks.sampling import session_in_sample
from tracks.url import parse_store_url

__all__ = [
    "DEFAULT_RECORDER",
    "ORIGINS",
    "PROP_TYPES",
    "Origin",
    "Outcome",
    "PropRule",
    "Routing",
    "Stream",
    "StreamConfig",
    "StreamConfigError",
    "load_streams",
]

Origin: TypeAlias = Literal["server", "client"]
Outcome: TypeAlias = Literal["accepted", "rejected", "sampled_out"]

ORIGINS: tuple[Origin, ...] = ("server", "client")
DEFAULT_RECORDER = "default"
"""The recorder name meaning the server's own ``--recorder`` destinations."""

PROP_TYPES = ("int", "str", "bool", "float", "list", "object")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_PATTERN = re.compile(r"^[a-z0-9_]+\*?$")
_STREAM_KEYS = frozenset({"events", "sample_rate", "recorders", "origins", "props"})


class StreamConfigError(ValueError):
    """A stream configuration that cannot be used. The message names the file, line and reason.

    Attributes:
        path: the file (``None`` for a configuration built in code).
        line: 1-based line of the offending part, when known.
        reason: what is wrong, without the location.
    """

    def __init__(self, reason: str, *, path: str | Path | None = None, line: int | None = None):
        where = "" if path is None else f"{path}:" + ("" if line is None else f"{line}:")
        super().__init__(f"{where} {reason}" if where else reason)
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PropRule:
    """A prop a stream requires (or, when ``optional``, only types)."""

    type: str
    optional: bool = False

    def check(self, name: str, props: Mapping[str, JSONValue]) -> str | None:
        """Why ``props`` break this rule, or ``None``."""
        if name not in props:
            return None if self.optional else f"missing prop {name}"
        return None if _has_type(props[name], self.type) else f"prop {name} must be {self.type}"


def _has_type(value: object, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list | tuple)
    return isinstance(value, Mapping)  # "object"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stream:
    """One stream: the events it accepts, their required props, its sample and recorders."""

    name: str
    events: tuple[str, ...]
    props: Mapping[str, PropRule] = field(default_factory=lambda: MappingProxyType({}))
    sample_rate: float = 1.0
    recorders: tuple[str, ...] = (DEFAULT_RECORDER,)
    origins: frozenset[Origin] = frozenset({"server"})

    def specificity(self, name: str) -> int | None:
        """How closely this stream names ``name``: higher is closer; ``None``: not at all."""
        best: int | None = None
        for pattern in self.events:
            if pattern == name:
                return len(name) + 1  # an exact name beats every pattern
            if pattern.endswith("*") and name.startswith(pattern[:-1]):
                best = max(best or 0, len(pattern) - 1)
        return best

    def client_view(self) -> dict[str, JSONValue]:
        return {
            "events": list(self.events),
            "props": {
                name: rule.type + ("?" if rule.optional else "")
                for name, rule in self.props.items()
            },
            "sample_rate": self.sample_rate,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Routing:
    """Where one event goes, or why it goes nowhere.

    Attributes:
        outcome: ``"accepted"``; ``"rejected"`` (an error: count it, tell the sender);
            ``"sampled_out"`` (not an error: its session is outside the stream's sample).
        stream: the stream that took it (also set when sampled out or its props failed).
        reason: why it is not recorded: ``no stream accepts <name>``, ``origin client not
            allowed``, ``missing prop x``, ``prop x must be int``, ``sampled out``.
        recorders: the recorder names to write it to (empty unless accepted).
    """

    outcome: Outcome
    stream: str | None = None
    reason: str | None = None
    recorders: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"

    @property
    def sampled_out(self) -> bool:
        return self.outcome == "sampled_out"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """Every stream, and the extra named recorders they may write to.

    Build one with `load_streams`, `StreamConfig.default` or `StreamConfig.from_mapping`.
    """

    streams: tuple[Stream, ...]
    recorders: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        problem = _problem(self.streams, self.recorders)
        if problem is not None:
            raise StreamConfigError(problem[1])

    @classmethod
    def default(cls, *, prefix: str = "jetpack_rtc_") -> StreamConfig:
        """Today's behaviour without a file.

        ``presence``: the four server events, every session, to the default recorders.
        ``client_errors``: ``<prefix>connection_error`` from browsers, to the same recorders,
        with the ids that line them up with the server's events of that session.
        """
        names = tuple(f"{prefix}{kind}" for kind in ("join", "leave", "blocked"))
        client_error = f"{prefix}connection_error"
        return cls(
            streams=(
                Stream(name="presence", events=(*names, client_error)),
                Stream(
                    name="client_errors",
                    events=(client_error,),
                    origins=frozenset({"client"}),
                    props=MappingProxyType(
                        {
                            "blog_id": PropRule("int"),
                            "post_id": PropRule("int"),
                            "session_id": PropRule("int"),
                            "error_code": PropRule("str"),
                            "close_code": PropRule("int", optional=True),
                            "wp_user_id": PropRule("int", optional=True),
                        }
                    ),
                ),
            )
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> StreamConfig:
        """Build from a parsed document (the TOML or JSON shape above).

        Raises:
            StreamConfigError: the reason, without a file or line (`load_streams` adds them).
        """
        config, problem = _build(data)
        if problem is not None:
            raise StreamConfigError(problem[1])
        assert config is not None
        return config

    def route(self, event: Event, *, origin: Origin) -> Routing:
        """Which stream takes ``event`` from ``origin``, and which recorders it goes to."""
        ranked = sorted(
            (
                (rank, stream)
                for stream in self.streams
                if (rank := stream.specificity(event.name)) is not None
            ),
            key=lambda item: -item[0],
        )
        if not ranked:
            return Routing(outcome="rejected", reason=f"no stream accepts {event.name}")
        stream = next((stream for _, stream in ranked if origin in stream.origins), None)
        if stream is None:
            return Routing(
                outcome="rejected", stream=ranked[0][1].name, reason=f"origin {origin} not allowed"
            )
        for name, rule in stream.props.items():
            reason = rule.check(name, event.props)
            if reason is not None:
                return Routing(outcome="rejected", stream=stream.name, reason=reason)
        if stream.sample_rate < 1:
            props = event.props
            if not session_in_sample(
                props.get("blog_id"),
                props.get("post_id"),
                props.get("session_id"),
                stream.sample_rate,
            ):
                return Routing(outcome="sampled_out", stream=stream.name, reason="sampled out")
        return Routing(outcome="accepted", stream=stream.name, recorders=stream.recorders)

    def recorder_urls(self) -> dict[str, str]:
        """The extra named recorders (not ``default``), name to URL."""
        return dict(self.recorders)

    def client_view(self) -> dict[str, JSONValue]:
        """What browsers need (``GET /api/streams``): client streams, no recorder URLs.

        ``{"sampling": {...}, "streams": {name: {"events", "props", "sample_rate"}}}``
        """
        return {
            "sampling": {"hash": "fnv1a-32", "key": "{blog_id}:{post_id}:{session_id}"},
            "streams": {
                stream.name: stream.client_view()
                for stream in self.streams
                if "client" in stream.origins
            },
        }


Path_: TypeAlias = tuple[str, ...]
Problem: TypeAlias = tuple[Path_, str]
"""Where in the document (keys from the top) and what is wrong."""


def _build(data: Mapping[str, object]) -> tuple[StreamConfig | None, Problem | None]:
    if not isinstance(data, Mapping):
        return None, ((), "the configuration must be a table (an object)")
    unknown = sorted(set(data) - {"streams", "recorders"})
    if unknown:
        return None, ((unknown[0],), f"unknown key {unknown[0]!r} (expected streams, recorders)")
    recorders_data = data.get("recorders", {})
    if not isinstance(recorders_data, Mapping):
        return None, (("recorders",), "recorders must be a table of name = URL")
    recorders: dict[str, str] = {}
    for name, url in recorders_data.items():
        if name == DEFAULT_RECORDER:
            return None, (("recorders", name), "'default' is the server's own recorders")
        if not isinstance(url, str):
            return None, (("recorders", name), f"recorder {name} must be a URL string")
        reason = _recorder_url_problem(url)
        if reason is not None:
            return None, (("recorders", name), f"recorder {name}: {reason}")
        recorders[name] = url
    streams_data = data.get("streams")
    if not isinstance(streams_data, Mapping) or not streams_data:
        return None, (("streams",), "at least one [streams.NAME] table is needed")
    streams: list[Stream] = []
    for name, body in streams_data.items():
        stream, problem = _build_stream(name, body)
        if problem is not None:
            return None, problem
        assert stream is not None
        streams.append(stream)
    problem = _problem(streams, recorders)
    if problem is not None:
        return None, problem
    return StreamConfig(streams=tuple(streams), recorders=MappingProxyType(recorders)), None


def _build_stream(name: str, body: object) -> tuple[Stream | None, Problem | None]:
    at: Path_ = ("streams", name)
    if not _STREAM_NAME.match(name):
        return None, (at, f"stream name {name!r}: use letters, digits, _ and -")
    if not isinstance(body, Mapping):
        return None, (at, f"stream {name} must be a table")
    unknown = sorted(set(body) - _STREAM_KEYS)
    if unknown:
        return None, ((*at, unknown[0]), f"stream {name}: unknown key {unknown[0]!r}")
    events = body.get("events")
    if not isinstance(events, list) or not events:
        return None, ((*at, "events"), f"stream {name}: events must be a non-empty list")
    for pattern in events:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            return None, (
                (*at, "events", str(pattern)),
                f"stream {name}: bad event pattern {pattern!r} (an event name or prefix*)",
            )
    rate = body.get("sample_rate", 1.0)
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not math.isfinite(rate)
        or not 0 <= rate <= 1
    ):
        return None, (
            (*at, "sample_rate"),
            f"stream {name}: sample_rate must be a number within [0, 1], got {rate!r}",
        )
    recorders = body.get("recorders", [DEFAULT_RECORDER])
    if not isinstance(recorders, list) or not all(isinstance(r, str) for r in recorders):
        return None, ((*at, "recorders"), f"stream {name}: recorders must be a list of names")
    origins = body.get("origins", ["server"])
    if not isinstance(origins, list) or not origins:
        return None, ((*at, "origins"), f"stream {name}: origins must be a non-empty list")
    checked_origins: set[Origin] = set()
    for origin in origins:
        if origin not in ORIGINS:
            return None, (
                (*at, "origins", str(origin)),
                f"stream {name}: unknown origin {origin!r} (expected server, client)",
            )
        checked_origins.add("server" if origin == "server" else "client")
    props_data = body.get("props", {})
    if not isinstance(props_data, Mapping):
        return None, ((*at, "props"), f"stream {name}: props must be a table of name = type")
    props: dict[str, PropRule] = {}
    for prop, kind in props_data.items():
        base = kind[:-1] if isinstance(kind, str) and kind.endswith("?") else kind
        if base not in PROP_TYPES:
            return None, (
                (*at, "props", prop),
                f"stream {name}: prop {prop} has unknown type {kind!r}"
                f" (expected {', '.join(PROP_TYPES)}, optionally with ?)",
            )
        props[prop] = PropRule(str(base), optional=base != kind)
    stream = Stream(
        name=name,
        events=tuple(events),
        props=MappingProxyType(props),
        sample_rate=float(rate),
        recorders=tuple(recorders),
        origins=frozenset(checked_origins),
    )
    return stream, None


def _problem(streams: Sequence[Stream], recorders: Mapping[str, str]) -> Problem | None:
    """What makes a whole configuration unusable: unknown recorders, ambiguous routes."""
    claimed: dict[tuple[str, Origin], str] = {}
    for stream in streams:
        for recorder in stream.recorders:
            if recorder != DEFAULT_RECORDER and recorder not in recorders:
                return (
                    ("streams", stream.name, "recorders", recorder),
                    f"stream {stream.name}: unknown recorder {recorder!r}"
                    " (define it under [recorders], or use 'default')",
                )
        for pattern in stream.events:
            for origin in stream.origins:
                other = claimed.setdefault((pattern, origin), stream.name)
                if other != stream.name:
                    return (
                        ("streams", stream.name, "events", pattern),
                        f"{pattern} from {origin} is in streams {other} and {stream.name}",
                    )
    return None


def _recorder_url_problem(url: str) -> str | None:
    url = url.strip()
    if url in ("none", "memory:"):
        return None
    scheme = url.partition(":")[0].lower()
    if scheme in ("http", "https"):
        return None if len(url) > len(scheme) + 3 and "://" in url else "needs a host"
    try:
        parse_store_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def load_streams(path: str | Path) -> StreamConfig:
    """Read a stream configuration: JSON if the name ends in ``.json``, else TOML.

    Raises:
        StreamConfigError: the file cannot be read or used; the message is
            ``path:line: reason``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamConfigError(f"cannot read the stream configuration: {exc}", path=path) from exc
    is_json = path.suffix.lower() == ".json"
    data: object
    try:
        data = json.loads(text) if is_json else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamConfigError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's message ends with "(at line L, column C)".
        message = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)$", message)
        reason = message[: match.start()].strip() if match else message
        line = int(match[1]) if match else None
        if message.endswith("(at end of document)"):
            line = max(len(text.splitlines()), 1)
        raise StreamConfigError(f"invalid TOML: {reason}", path=path, line=line) from exc
    if not isinstance(data, Mapping):
        raise StreamConfigError("the configuration must be an object", path=path, line=1)
    config, problem = _build(data)
    if problem is not None:
        where, reason = problem
        line = (_json_line if is_json else _toml_line)(text, where)
        raise StreamConfigError(reason, path=path, line=line)
    assert config is not None
    return config


def _json_line(text: str, where: Path_) -> int:
    """The line of the last key (or value) of ``where``, found in order after its parents."""
    position = 0
    for part in where:
        found = text.find(json.dumps(part), position)
        if found < 0:
            break
        position = found
    return text.count("\n", 0, position) + 1


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(
    r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="""
)


def _toml_keys(text: str) -> tuple[str, ...]:
    parts = re.findall(r""""([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+)""", text)
    return tuple(
        next(piece for piece in groups if piece) if any(groups) else "" for groups in parts
    )


def _toml_line(text: str, where: Path_) -> int:
    """The line that defines the deepest part of ``where`` (a table header or a key)."""
    best_line, best_depth = 1, -1
    table: tuple[str, ...] = ()
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if header := _HEADER.match(line):
            table = _toml_keys(header[1])
            path = table
        elif key := _KEY.match(line):
            path = table + _toml_keys(key[1])
        else:
            continue
        # How deep into `where` this line reaches.
        depth = len(path) if where[: len(path)] == path else -1
        if depth > best_depth:
            best_line, best_depth = number, depth
    # A value inside a list (an event pattern, a recorder name): its own line when it has one.
    if best_depth == len(where) - 1 and where:
        needle = re.compile(r"""["']""" + re.escape(where[-1]) + r"""["']""")
        for number in range(best_line, len(lines) + 1):
            if needle.search(lines[number - 1]):
                return number
    return best_line
