"""Stream routing: which stream takes an event, from whom, sampled how, recorded where.

Pure: no I/O, no file format here (`tracks.streams.config` reads the file). Routing an event
(`StreamConfig.route`): the streams whose ``events`` take its name are tried most specific
first (an exact name, then the longest ``prefix*``); the first that allows the event's origin
takes it. That stream's props are then checked, then its sample: the session (``blog_id``,
``post_id``, ``session_id``) is in or out for all its events, on the server and in the browser
alike. A name may be in two streams only for different origins (the default below keeps
client connection errors apart this way), so the order of streams never matters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeAlias

from tracks.event import Event, JSONValue
from tracks.sampling import props_in_sample

__all__ = [
    "DEFAULT_RECORDER",
    "ORIGINS",
    "PROP_TYPES",
    "DocumentKey",
    "Origin",
    "Outcome",
    "PropRule",
    "Routing",
    "Stream",
    "StreamConfig",
    "StreamConfigError",
]

Origin: TypeAlias = Literal["server", "client"]
Outcome: TypeAlias = Literal["accepted", "rejected", "sampled_out"]
DocumentKey: TypeAlias = tuple[str | int, ...]
"""Where in a configuration document: table keys and list indexes from the top."""

ORIGINS: tuple[Origin, ...] = ("server", "client")
DEFAULT_RECORDER = "default"
"""The recorder name meaning the server's own ``--recorder`` destinations."""

PROP_TYPES = ("int", "str", "bool", "float", "list", "object")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(key: DocumentKey) -> str:
    """``streams.a.events[1]``; keys that are not bare in TOML are quoted."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            text += f".{name}" if text else name
    return text


class StreamConfigError(ValueError):
    """A stream configuration that cannot be used: ``path:line: key: reason``.

    Attributes:
        reason: what is wrong, without the location.
        key: where in the document (``()``: the whole of it); the message shows it dotted.
        path: the file (``None`` for a configuration built in code).
        line: 1-based line of the offending part, when known.
    """

    def __init__(
        self,
        reason: str,
        *,
        key: DocumentKey = (),
        path: str | Path | None = None,
        line: int | None = None,
    ) -> None:
        message = f"{_dotted(key)}: {reason}" if key else reason
        if path is not None:
            message = f"{path}:{'' if line is None else f'{line}:'} {message}"
        super().__init__(message)
        self.reason = reason
        self.key = key
        self.path = path
        self.line = line

    def located(self, path: str | Path, line: int | None) -> StreamConfigError:
        """The same problem, placed in the file it came from."""
        return StreamConfigError(self.reason, key=self.key, path=path, line=line)


@dataclass(frozen=True, slots=True)
class PropRule:
    """A prop a stream requires (or, when ``optional``, only types)."""

    type: str
    optional: bool = False

    @classmethod
    def parse(cls, text: str) -> PropRule:
        """``"int"`` (required) or ``"int?"`` (optional), any of `PROP_TYPES`.

        Raises:
            ValueError: an unknown type.
        """
        base = text.removesuffix("?")
        if base not in PROP_TYPES:
            raise ValueError(
                f"unknown type {text!r} (expected {', '.join(PROP_TYPES)}, optionally with ?)"
            )
        return cls(base, optional=base != text)

    def __str__(self) -> str:
        return self.type + ("?" if self.optional else "")

    def check(self, name: str, props: Mapping[str, JSONValue]) -> str | None:
        """Why ``props`` break this rule, or ``None``."""
        if name not in props:
            return None if self.optional else f"missing prop {name}"
        return None if _has_type(props[name], self.type) else f"prop {name} must be {self.type}"


def _has_type(value: object, kind: str) -> bool:
    # A bool is never an int (nor a float) here, though Python says it is.
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
            "props": {name: str(rule) for name, rule in self.props.items()},
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

    Build one with `tracks.streams.load_streams`, `StreamConfig.default` or this constructor.

    Raises:
        StreamConfigError: a stream names a recorder that is not defined, or a name is in two
            streams for the same origin (its ``key`` says which list item).
    """

    streams: tuple[Stream, ...]
    recorders: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        claimed: dict[tuple[str, Origin], str] = {}
        for stream in self.streams:
            for index, recorder in enumerate(stream.recorders):
                if recorder != DEFAULT_RECORDER and recorder not in self.recorders:
                    raise StreamConfigError(
                        f"unknown recorder {recorder!r} (define it under [recorders],"
                        " or use 'default')",
                        key=("streams", stream.name, "recorders", index),
                    )
            for index, pattern in enumerate(stream.events):
                for origin in sorted(stream.origins):
                    other = claimed.setdefault((pattern, origin), stream.name)
                    if other != stream.name:
                        raise StreamConfigError(
                            f"{pattern} from {origin} is in streams {other} and {stream.name}",
                            key=("streams", stream.name, "events", index),
                        )

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
        if not props_in_sample(event.props, stream.sample_rate):
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
