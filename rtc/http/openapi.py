"""The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`. No I/O here.

Each `Endpoint` names the route class its path maps to (`rtc.http.routes`) and the
operations it documents; `tests/rtc/test_openapi.py` routes every documented path and checks
that the route and its methods are the documented ones, and that every route but the two
WebSocket ones is documented. The WebSockets are described in the document's description:
they are upgrades, not HTTP operations a client could call and read an answer from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from rtc.http.openapi_schemas import ID, SCHEMAS, SESSION_ID, Schema, ref
from rtc.http.routes import (
    CaptureBlog,
    CaptureList,
    Health,
    Ingest,
    Kick,
    LiveStats,
    MetricsText,
    OpenApiDocument,
    Page,
    RoomList,
    Roster,
    Route,
    SessionTimeline,
    Stats,
    Streams,
)
from tracks import JSONValue

__all__ = ["ENDPOINTS", "Answer", "Endpoint", "Operation", "Parameter", "document"]

JSON = "application/json"
HTML = "text/html"

Access = Literal["open", "room", "read", "admin", "ingest"]
"""Who may call an operation when the server has a secret (README, "Who may read what")."""


@dataclass(frozen=True, slots=True)
class Parameter:
    """A path or query parameter; `example` builds a target that routes (the test's)."""

    name: str
    where: Literal["path", "query"]
    schema: Schema
    description: str
    example: str = "1"

    def to_json(self) -> dict[str, JSONValue]:
        example: JSONValue = self.example
        if self.schema.get("type") == "integer":
            example = int(self.example)
        return {"name": self.name, "in": self.where, "required": self.where == "path",
                "description": self.description, "schema": self.schema, "example": example}


@dataclass(frozen=True, slots=True)
class Answer:
    """One documented response: JSON with `schema`, or another `content_type`."""

    status: int
    description: str
    schema: Schema | None = None
    content_type: str | None = JSON
    headers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, JSONValue]:
        answer: dict[str, JSONValue] = {"description": self.description}
        if self.content_type is not None:
            schema = self.schema if self.schema is not None else {"type": "string"}
            answer["content"] = {self.content_type: {"schema": schema}}
        if self.headers:
            answer["headers"] = {name: {"required": True, "schema": {"type": "string"}}
                                 for name in self.headers}
        return answer


def error(status: int, description: str, *, headers: tuple[str, ...] = ()) -> Answer:
    """An answer in the one error shape, its `status` field equal to the HTTP status."""
    schema: Schema = {"allOf": [ref("Error"),
                                {"properties": {"status": {"const": status}}}]}
    return Answer(status, description, schema, headers=headers)


BAD_IDS = error(400, "ids that are not positive integers below 2**63 (session ids: uint32)")
UNAUTHORIZED = error(401, "with --secret: no credential, or a bad one",
                     headers=("WWW-Authenticate",))
_FORBIDDEN = {
    "room": "with --secret: a token for another room, or one revoked by a kick",
    "read": "with --secret: a token that is not a read or admin token",
    "admin": "without --secret (the admin API is off), or a token that is not an admin one",
}


@dataclass(frozen=True, slots=True)
class Operation:
    """One method of an endpoint. The access answers (401, 403) are added from `access`."""

    method: str
    summary: str
    access: Access
    answers: tuple[Answer, ...]
    parameters: tuple[Parameter, ...] = ()
    body: Schema | None = None
    body_required: bool = True

    def to_json(self, path_parameters: tuple[Parameter, ...]) -> dict[str, JSONValue]:
        answers = list(self.answers)
        if path_parameters:
            answers.append(BAD_IDS)
        if self.access in ("room", "read", "admin"):
            answers += [UNAUTHORIZED, error(403, _FORBIDDEN[self.access])]
        by_status: dict[int, Answer] = {}
        for answer in sorted(answers, key=lambda answer: answer.status):
            if (same := by_status.get(answer.status)) is not None:  # one entry per status
                answer = error(answer.status, f"{same.description}; {answer.description}")
            by_status[answer.status] = answer
        operation: dict[str, JSONValue] = {
            "summary": self.summary,
            "operationId": f"{self.method.lower()}_{self.summary.split(':')[0]}",
            "security": _security(self.access),
            "responses": {str(status): answer.to_json() for status, answer in by_status.items()},
        }
        if self.parameters:
            operation["parameters"] = [parameter.to_json() for parameter in self.parameters]
        if self.body is not None:
            operation["requestBody"] = {"required": self.body_required,
                                        "content": {JSON: {"schema": self.body}}}
        return operation


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A path template, the route class it maps to, and its documented operations."""

    path: str
    route: type[Route]
    operations: tuple[Operation, ...]
    parameters: tuple[Parameter, ...] = ()

    def example(self) -> str:
        """A concrete path of this template (each path parameter its example)."""
        return self.path.format(**{p.name: p.example for p in self.parameters})

    def to_json(self) -> dict[str, JSONValue]:
        item: dict[str, JSONValue] = {op.method.lower(): op.to_json(self.parameters)
                                      for op in self.operations}
        if self.parameters:
            item["parameters"] = [parameter.to_json() for parameter in self.parameters]
        return item


_ROLES: dict[Access, list[JSONValue]] = {
    "open": [], "room": ["room", "read", "admin"], "read": ["read", "admin"],
    "admin": ["admin"], "ingest": ["room"],
}


def _security(access: Access) -> list[JSONValue]:
    """OpenAPI 3.1 §4.8.30: for schemes other than OAuth the list names the roles required.
    An empty requirement (`{}`) means none is needed: every read of a server without
    --secret, and client events (refused one by one when tokens are on)."""
    if access == "open":
        return []
    roles = _ROLES[access]
    anyone: list[JSONValue] = [] if access == "admin" else [{}]
    return [{"bearer": roles}, {"query_token": roles}, *anyone]

BLOG = Parameter("blog_id", "path", ID, "the blog", "7")
POST = Parameter("post_id", "path", ID, "the post", "42")
SESSION = Parameter("session_id", "path", SESSION_ID, "the session (Yjs clientID)", "0")
ROOM = (BLOG, POST)
_DAY_PATTERN = (
    r"^((000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])-"
    r"(0[1-9]|[12][0-9]|3[01])|[0-9]+(\.[0-9]+)?[smhdw]|[0-9]{11,20})$"
)
_DAY: Schema = {"type": "string", "pattern": _DAY_PATTERN}
_SCOPE = (
    Parameter("blog_id", "query", ID, "one blog (default: every blog)", "7"),
    Parameter("post_id", "query", ID, "one post of the blog (needs blog_id)", "42"),
)
_RANGE = (
    Parameter("since", "query", _DAY, "first day: YYYY-MM-DD, a duration (7d), or ms", "7d"),
    Parameter("until", "query", _DAY, "last day, the same forms (default: today)", "0d"),
)
NOT_FOUND = error(404, "no such file in the pages folder")
CLUSTER_DOWN = error(503, "cluster mode: the cluster's Redis does not answer")
NOT_BUILT = Answer(503, "the demo's JavaScript bundle is not built: a page that says how",
                   content_type=HTML)


def _page(path: str, summary: str, *parameters: Parameter, built: bool = False) -> Endpoint:
    answers: tuple[Answer, ...] = (Answer(200, "the page", content_type=HTML), NOT_FOUND)
    if built:
        answers += (NOT_BUILT,)
    return Endpoint(path, Page, (Operation("GET", summary, "open", answers),), parameters)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/openapi.json", OpenApiDocument, (Operation(
        "GET", "openapi: this document", "open",
        (Answer(200, "the OpenAPI 3.1 document", {"type": "object"}),)),)),
    Endpoint("/healthz", Health, (Operation(
        "GET", "health: status, uptime and counts (no user, name or room)", "open",
        (Answer(200, "the server is up", ref("Health")),)),)),
    Endpoint("/metrics", MetricsText, (Operation(
        "GET", "metrics: Prometheus text", "read",
        (Answer(200, "Prometheus text format 0.0.4", content_type="text/plain"),)),)),
    Endpoint("/api/rooms", RoomList, (Operation(
        "GET", "rooms: loaded rooms with their session and contributor counts", "read",
        (Answer(200, "the loaded rooms (cluster mode: with sessions on any node)",
                ref("Rooms")), CLUSTER_DOWN)),)),
    Endpoint("/api/rooms/{blog_id}/{post_id}", Roster, (Operation(
        "GET", "roster: each user present with id, name and sessions", "room",
        (Answer(200, "the live roster (empty when the room is not loaded; cluster mode: every"
                     " node's sessions)", ref("Roster")), CLUSTER_DOWN)),),
        ROOM),
    Endpoint("/api/rooms/{blog_id}/{post_id}/kick", Kick, (Operation(
        "POST", "kick: revoke a user's tokens for the room and close their sessions (4403)",
        "admin",
        (Answer(200, "the user's sessions closed", ref("Kicked")),
         error(400, 'a body that is not {"user_id": N}, N a JSON integer (1, not 1.0)'),
         error(503, "cluster mode: kicked on this node only, Redis does not answer")),
        body=ref("Kick")),), ROOM),
    Endpoint("/api/events", Ingest, (
        Operation(
            "POST", "ingest: client events from browsers", "ingest",
            (Answer(202, "accepted for recording (best effort); invalid events listed",
                    ref("Ingested")),
             error(400, "a body that is not JSON or not a batch"),
             error(403, "an Origin outside --allowed-origin"),
             error(413, "a body over 1 MiB"),
             error(429, "too many batches from this address")),
            body=ref("EventBatch")),
        Operation(
            "OPTIONS", "preflight: CORS for pages on an allowed origin", "open",
            (Answer(204, "CORS headers for an allowed Origin", content_type=None),
             error(403, "an Origin outside --allowed-origin"))),
    )),
    Endpoint("/api/streams", Streams, (Operation(
        "GET", "streams: what browsers need to sample and send like the server", "open",
        (Answer(200, "the client streams, and the blog's capture with blog_id", ref("Streams")),
         error(400, "a blog_id that is not a positive integer below 2**63")),
        (Parameter("blog_id", "query", ID, "add this blog's capture settings", "7"),)),)),
    Endpoint("/api/capture", CaptureList, (Operation(
        "GET", "captures: per-blog capture switches and sample rates", "admin",
        (Answer(200, "the blogs with settings of their own", ref("Captures")),)),)),
    Endpoint("/api/capture/{blog_id}", CaptureBlog, tuple(Operation(
        method, f"capture{'' if method == 'PUT' else '_post'}: set a blog's capture", "admin",
        (Answer(200, "the blog's settings now", ref("BlogCapture")),
         error(400, "a body that is not the settings"), CLUSTER_DOWN),
        body=ref("CaptureChange"), body_required=False) for method in ("PUT", "POST")),
        (BLOG,)),
    Endpoint("/api/stats", Stats, (Operation(
        "GET", "stats: presence figures of a scope (tracks report --json)", "read",
        (Answer(200, "the figures", ref("Figures")),
         error(400, "malformed ids or days, a post_id without its blog_id, or a range over"
                    " --max-stats-days (an open since counts that many days)"),
         error(404, "no SQLite event store"),
         error(503, "busy with other stats queries, over the query budget, or abandoned")),
        _SCOPE + _RANGE),)),
    Endpoint("/api/stats/live", LiveStats, (Operation(
        "GET", "live: sessions and contributors active now", "read",
        (Answer(200, "active now, per room and in total", ref("Live")),
         error(400, "malformed ids, or a post_id without its blog_id"), CLUSTER_DOWN),
        _SCOPE),)),
    Endpoint("/api/sessions/{blog_id}/{post_id}/{session_id}", SessionTimeline, (Operation(
        "GET", "timeline: one session's connections, errors and company", "room",
        (Answer(200, "the session's timeline", ref("Timeline")),
         error(404, "no SQLite event store, or no events of that session"))),),
        (*ROOM, SESSION)),
    _page("/", "demo_page: the demo page", built=True),
    _page("/demo", "demo_page_too: the demo page", built=True),
    _page("/demo/{file}", "demo_file: a file of the pages folder",
          Parameter("file", "path", {"type": "string", "minLength": 1, "maxLength": 255},
                    "a file's name (a path below the folder: dot-files are no files)",
                    "index.html")),
    _page("/stats", "stats_page: the stats page"),
    _page("/sessions/{blog_id}/{post_id}/{session_id}", "session_page: a session's page",
          *ROOM, SESSION),
)

DESCRIPTION = """\
A Yjs room server with presence analytics. Every error has one shape,
`{"error": "...", "status": N}`: an unknown path is a 404, ids that are not positive
integers below 2**63 a 400, a method a path does not take a 405 with an `Allow` header.

**Credentials.** Without `--secret` every read is open and the admin API answers 403.
With it, reads need a token signed with the secret, as `Authorization: Bearer <token>` or
`?token=`: a room token (`rtc token --blog-id B --post-id P --user-id U`) opens that room's
roster, feed and timelines; an API token (`rtc token --scope read|admin`) opens every room's,
the stats and the metrics; only an `admin` token opens kick and capture control. The
security requirements below name these roles: `room`, `read`, `admin`.

**WebSockets** (upgrades, not HTTP operations; refused before the upgrade with this error
shape: 400, 403 for a foreign Origin, 429/503 past the connection caps):
- `ws://HOST:PORT/rooms/{blog_id}/{post_id}[?post_type=...&token=...]`: a post's room,
  the y-websocket protocol. A bad token closes it with 4401/4403 after the upgrade.
- `ws://HOST:PORT/events?blog_id=B&post_id=P[&token=...]`: the room's recorded events,
  live (JSON text frames; recent ones first). Needs a room, read or admin token.
"""


@functools.cache
def document() -> dict[str, JSONValue]:
    """The OpenAPI 3.1 document (built once; the same object every call: do not mutate)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "rtc", "version": "1", "description": DESCRIPTION},
        "paths": {endpoint.path: endpoint.to_json() for endpoint in ENDPOINTS},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "a room token or a read/admin API token"},
                "query_token": {"type": "apiKey", "in": "query", "name": "token",
                                "description": "the same token, where no header can be set"},
            },
        },
    }
