"""The stream configuration file: its shape, loading and validation. Reads one file; no other I/O.

A file (TOML, or JSON when its name ends in ``.json``) looks like this::

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

pydantic checks the document's shape, strictly (no ``"1"`` for ``1``, no unknown keys);
`StreamConfig` then checks what spans streams (recorders named, one stream per name and
origin). Either names the offending `DocumentKey`; `tracks.streams.positions` turns it into a
line of the file, so every problem reads ``path:line: key: reason``.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError
from pydantic_core import ErrorDetails

from tracks.streams.positions import json_lines, line_of, toml_lines
from tracks.streams.routing import (
    DEFAULT_RECORDER,
    DocumentKey,
    Origin,
    PropRule,
    Stream,
    StreamConfig,
    StreamConfigError,
)
from tracks.urls import recorder_kind

__all__ = ["load_streams", "streams_from_mapping"]

_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
_EVENT_PATTERN = re.compile(r"[a-z0-9_]+\*?")


def _stream_name(name: str) -> str:
    if not _STREAM_NAME.fullmatch(name):
        raise ValueError("a stream name holds only letters, digits, _ and -")
    return name


def _event_pattern(pattern: str) -> str:
    if not _EVENT_PATTERN.fullmatch(pattern):
        raise ValueError(f"bad event pattern {pattern!r} (an event name or prefix*)")
    return pattern


def _prop_rule(value: object) -> PropRule:
    if not isinstance(value, str):
        # A ValueError, not a TypeError: pydantic reports only the former as a problem.
        raise ValueError(f"must be a type name such as 'int' or 'int?', got {value!r}")
    return PropRule.parse(value)


def _recorder_name(name: str) -> str:
    if name == DEFAULT_RECORDER:
        raise ValueError(f"{DEFAULT_RECORDER!r} is the server's own recorders")
    return name


def _recorder_url(url: str) -> str:
    recorder_kind(url)
    return url


def _some_streams(streams: dict[str, _StreamModel]) -> dict[str, _StreamModel]:
    if not streams:
        raise ValueError("at least one [streams.NAME] table is needed")
    return streams


_EventPattern = Annotated[str, AfterValidator(_event_pattern)]
_StreamName = Annotated[str, AfterValidator(_stream_name)]
_RecorderName = Annotated[str, AfterValidator(_recorder_name)]
_RecorderUrl = Annotated[str, AfterValidator(_recorder_url)]
_PropType = Annotated[PropRule, PlainValidator(_prop_rule)]


def _server_only() -> list[Origin]:
    return ["server"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _StreamModel(_Strict):
    """``[streams.NAME]``."""

    events: Annotated[list[_EventPattern], Field(min_length=1)]
    sample_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 1.0
    recorders: list[str] = Field(default_factory=lambda: [DEFAULT_RECORDER])
    origins: Annotated[list[Origin], Field(min_length=1)] = Field(default_factory=_server_only)
    props: dict[str, _PropType] = Field(default_factory=dict)

    def stream(self, name: str) -> Stream:
        return Stream(
            name=name,
            events=tuple(self.events),
            props=MappingProxyType(dict(self.props)),
            sample_rate=self.sample_rate,
            recorders=tuple(self.recorders),
            origins=frozenset(self.origins),
        )


class _FileModel(_Strict):
    """The whole document."""

    recorders: dict[_RecorderName, _RecorderUrl] = Field(default_factory=dict)
    streams: Annotated[dict[_StreamName, _StreamModel], AfterValidator(_some_streams)] = Field(
        default_factory=dict, validate_default=True
    )

    def config(self) -> StreamConfig:
        """The routing this file describes; `StreamConfig` checks what spans streams."""
        return StreamConfig(
            streams=tuple(model.stream(name) for name, model in self.streams.items()),
            recorders=MappingProxyType(dict(self.recorders)),
        )


def streams_from_mapping(data: object) -> StreamConfig:
    """Build from a parsed document (the TOML or JSON shape above).

    Raises:
        StreamConfigError: the first problem, with its key but no file or line.
    """
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as exc:
        raise _problem(exc.errors(include_url=False)[0]) from exc
    return model.config()


def load_streams(path: str | Path) -> StreamConfig:
    """Read a stream configuration: JSON if the name ends in ``.json``, else TOML.

    Raises:
        StreamConfigError: the file cannot be read or used; the message is
            ``path:line: key: reason``, for the problem nearest the top of the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamConfigError(f"cannot read the stream configuration: {exc}", path=path) from exc
    is_json = path.suffix.lower() == ".json"
    data = _parse_json(text, path) if is_json else _parse_toml(text, path)
    cause: Exception
    try:
        return _FileModel.model_validate(data).config()
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors(include_url=False)]
        cause = exc
    except StreamConfigError as error:
        problems, cause = [error], error
    try:
        lines = json_lines(text) if is_json else toml_lines(text)
    except ValueError:  # a scanner bug must not hide the problem itself: say it without a line
        lines = None
    if lines is None:
        raise problems[0].located(path, None) from cause
    # The problem nearest the top; on one line, one the text names (an unknown key) before one
    # it only implies (a missing key, placed at its table).
    first = min(
        problems, key=lambda problem: (line_of(lines, problem.key), problem.key not in lines)
    )
    raise first.located(path, line_of(lines, first.key)) from cause


def _parse_json(text: str, path: Path) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamConfigError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from exc


def _parse_toml(text: str, path: Path) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's message ends with "(at line L, column C)" or "(at end of document)";
        # the exception itself carries no position before 3.14.
        message = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)$", message)
        reason = message[: match.start()].strip() if match else message
        line = int(match[1]) if match else None
        if message.endswith("(at end of document)"):
            reason = message.removesuffix("(at end of document)").strip()
            line = max(len(text.splitlines()), 1)
        raise StreamConfigError(f"invalid TOML: {reason}", path=path, line=line) from exc


# pydantic's error types, in the words this file's readers use; ``{…}`` from the error's ctx.
_MESSAGES = {
    "too_short": "must not be empty",
    "less_than_equal": "must be at most {le}",
    "greater_than_equal": "must be at least {ge}",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "literal_error": "must be {expected}",
}


def _problem(error: ErrorDetails) -> StreamConfigError:
    """One pydantic error as this file's readers would put it."""
    # A dict key's own error is reported at the key.
    key: DocumentKey = tuple(part for part in error["loc"] if part != "[key]")
    kind = error["type"]
    context: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "extra_forbidden":
        # Only the top table and [streams.NAME] forbid other keys.
        model = _FileModel if len(key) == 1 else _StreamModel
        return StreamConfigError(f"unknown key (expected {', '.join(model.model_fields)})", key=key)
    if kind == "missing":
        return StreamConfigError("required", key=key)
    if kind == "value_error":
        return StreamConfigError(str(context["error"]), key=key)
    template = _MESSAGES.get(kind)
    reason = template.format(**context) if template else error["msg"]
    shown = repr(error["input"])
    reason += f", got {shown if len(shown) <= 40 else shown[:37] + '...'}"
    return StreamConfigError(reason if key else f"the configuration {reason}", key=key)
