"""The JSON Schemas (2020-12) of the HTTP API's bodies, for the OpenAPI document. No I/O here.

Strict (`additionalProperties: false`) where the server builds the whole body itself; open
where an answer is the `tracks` figures, which may grow new keys without breaking a client.
"""

from __future__ import annotations

from tracks import JSONValue

__all__ = ["ID", "SCHEMAS", "SESSION_ID", "ref"]

Schema = dict[str, JSONValue]

ID: Schema = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1,
              "description": "written as a JSON integer: 7, not 7.0 or 7e0"}
"""A blog, post or user id: a positive integer below 2**63 (ids are 64-bit columns). JSON
Schema counts 7.0 as an integer; the server does not (an id is never a float)."""
SESSION_ID: Schema = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
"""A session id: the Yjs awareness clientID, a uint32."""
COUNT: Schema = {"type": "integer", "minimum": 0}
MS: Schema = {"type": "integer", "description": "ms since the epoch"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: Schema, *, optional: tuple[str, ...] = (), strict: bool = True) -> Schema:
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }
    if strict:
        schema["additionalProperties"] = False
    return schema


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


_FIGURES: Schema = {
    "joins": COUNT,
    "unique_sessions": COUNT,
    "unique_users": COUNT,
    "unique_posts": COUNT,
    "sessions_per_user": {"type": "number", "minimum": 0},
    "peak_concurrent_sessions": COUNT,
    "peak_concurrent_users": COUNT,
    "session_duration_ms": _object(
        {
            "p50": _nullable(COUNT),
            "p90": _nullable(COUNT),
            "histogram": {
                "type": "array",
                "items": _object({"le_ms": _nullable(COUNT), "count": COUNT}),
            },
        },
        optional=("histogram",),
        strict=False,
    ),
    "blocked": COUNT,
    "blocked_rate": {"type": "number", "minimum": 0, "maximum": 1},
    "connection_errors_by_code": {"type": "object", "additionalProperties": COUNT},
}

SCHEMAS: dict[str, JSONValue] = {
    "Error": {
        **_object({"error": {"type": "string"}, "status": {"type": "integer"}}),
        "description": "The one error shape; `status` repeats the HTTP status.",
    },
    "Health": _object(
        {
            "status": {"const": "ok"},
            "uptime_s": {"type": "number", "minimum": 0},
            "rooms": COUNT,
            "connections": COUNT,
            "sessions": COUNT,
            # Cluster mode only: this node, and the cluster as its last heartbeat saw it.
            "node": {"type": "string"},
            "cluster": _object({"redis": {"type": "boolean"}, "nodes_alive": COUNT}),
        },
        optional=("node", "cluster"),
    ),
    "Rooms": _object(
        {
            "rooms": {
                "type": "array",
                "items": _object(
                    {
                        "blog_id": ID,
                        "post_id": ID,
                        "session_count": COUNT,
                        "contributor_count": COUNT,
                    }
                ),
            }
        }
    ),
    "Roster": _object(
        {
            "blog_id": ID,
            "post_id": ID,
            "loaded": {"type": "boolean"},
            "session_count": COUNT,
            "contributor_count": COUNT,
            "contributors": {
                "type": "array",
                "items": _object(
                    {
                        "id": ID,
                        "name": {"type": "string"},
                        "sessions": {
                            "type": "array",
                            "items": _object(
                                # `node`: cluster mode only, the node serving the session.
                                {"session_id": SESSION_ID, "connected_since": MS,
                                 "node": {"type": "string"}},
                                optional=("node",),
                            ),
                        },
                    },
                    optional=("id", "name"),
                ),
            },
        }
    ),
    # Request bodies are open: the server reads its keys and ignores any others.
    "Kick": {**_object({"user_id": ID}, strict=False), "examples": [{"user_id": 101}]},
    "Kicked": _object({"blog_id": ID, "post_id": ID, "user_id": ID, "closed": COUNT}),
    "ClientEvent": _object(
        {
            "event_id": {"type": "string", "description": "a UUID; derived when absent"},
            "name": {"type": "string", "maxLength": 128, "examples": ["jetpack_rtc_client_x"]},
            "ts": MS,
            "props": {"type": "object", "maxProperties": 32},
        },
        optional=("event_id", "ts", "props"),
        strict=False,
    ),
    "EventBatch": {
        **_object({"events": {"type": "array", "maxItems": 500, "items": ref("ClientEvent")}},
                  strict=False),
        "description": "Events are checked one by one: one that breaks the rules (README,"
                       " *Client events*) is listed in the answer's `rejected`, and the batch"
                       " is still a 202. Only a body that is no batch at all is a 400.",
        "examples": [{"events": [{"name": "jetpack_rtc_connection_error", "props": {
            "blog_id": 7, "post_id": 42, "session_id": 1, "error_code": "abnormal-closure",
            "close_code": 1006}}]}],
    },
    "Ingested": _object(
        {
            "accepted": COUNT,
            "duplicates": COUNT,
            "dropped": COUNT,
            "rejected": {
                "type": "array",
                "items": _object({"index": COUNT, "reason": {"type": "string"}}),
            },
        }
    ),
    "Capture": _object(
        {"enabled": {"type": "boolean"}, "sample_rate": {"type": "number", "minimum": 0,
                                                         "maximum": 1}}
    ),
    "CaptureChange": _object(
        {"enabled": {"type": "boolean"}, "sample_rate": {"type": "number", "minimum": 0,
                                                         "maximum": 1}},
        optional=("enabled", "sample_rate"),
        strict=False,
    ),
    "BlogCapture": _object(
        {"blog_id": ID, "enabled": {"type": "boolean"},
         "sample_rate": {"type": "number", "minimum": 0, "maximum": 1}}
    ),
    "Captures": _object(
        {"blogs": {"type": "object", "propertyNames": {"pattern": "^[1-9][0-9]*$"},
                   "additionalProperties": ref("Capture")}}
    ),
    "Streams": _object(
        {
            "sampling": {"type": "object"},
            "streams": {"type": "object", "additionalProperties": {"type": "object"}},
            "endpoint": {"const": "/api/events"},
            "capture": ref("BlogCapture"),
        },
        optional=("capture",),
    ),
    "Figures": _object(
        {
            **_FIGURES,
            "daily": {
                "type": "array",
                "items": _object({"day": {"type": "string", "format": "date"}, **_FIGURES},
                                 strict=False),
            },
            "top_posts": {
                "type": "array",
                "items": _object({"blog_id": ID, "post_id": ID, "unique_sessions": COUNT},
                                 strict=False),
            },
        },
        strict=False,
    ),
    "Live": _object(
        {
            "active_sessions": COUNT,
            "active_contributors": COUNT,
            "rooms": {
                "type": "array",
                "items": _object(
                    {"blog_id": ID, "post_id": ID, "sessions": COUNT, "contributors": COUNT}
                ),
            },
        }
    ),
    "Timeline": _object(
        {
            "blog_id": ID,
            "post_id": ID,
            "session_id": SESSION_ID,
            "wp_user_id": _nullable(ID),
            "first_ts": MS,
            "last_ts": MS,
            "total_duration_ms": COUNT,
            "connections": {"type": "array", "items": {"type": "object"}},
            "reconnects": COUNT,
            "blocked": {"type": "boolean"},
            "errors": {"type": "array", "items": {"type": "object"}},
            "company": {"type": "array", "items": {"type": "object"}},
            "events": {"type": "array", "items": {"type": "object"}},
        },
        strict=False,
    ),
}
