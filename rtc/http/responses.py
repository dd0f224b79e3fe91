"""One response shape for every HTTP answer, WebSocket handshake refusals included.

No I/O here but `file_response`, which reads in a worker thread. Every answer is a
websockets `Response` (returned from `process_request` for GETs, serialized by the plain
connection for other methods); every error body is `{"error": message, "status": status}`.
"""

from __future__ import annotations

import errno
import json
import mimetypes
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path

import anyio
from websockets.datastructures import Headers
from websockets.http11 import Response

from rtc.http.errors import HttpError

__all__ = ["error_response", "file_response", "json_response", "text_response"]

JSON = "application/json"


def text_response(
    status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> Response:
    """A complete response; the connection closes after it (no keep-alive on this port)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    fields = Headers()
    fields["Date"] = formatdate(usegmt=True)
    fields["Connection"] = "close"
    fields["Content-Type"] = content_type
    fields["Content-Length"] = str(len(body))
    fields["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        fields[name] = value
    return Response(status, reason, fields, body)


def json_response(
    status: int, payload: object, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return text_response(status, body, JSON, headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"error": message, "status": status}, headers)


async def file_response(root: Path, relative: str) -> Response:
    """Serve a file under `root`, never outside it, read off the event loop.

    Raises:
        HttpError: 404 when there is no such file under `root`.
    """

    def read() -> bytes | None:
        base = root.resolve()
        try:
            path = (base / relative).resolve()
            if not path.is_relative_to(base) or not path.is_file():
                return None
            return path.read_bytes()
        except ValueError:  # a NUL byte: a name no file system holds
            return None
        except OSError as error:
            if error.errno in (errno.ENAMETOOLONG, errno.EINVAL):
                return None  # a name no file system holds: no file of ours
            raise

    body = await anyio.to_thread.run_sync(read)
    if body is None:
        raise HttpError(404, f"no such file: {relative}")
    content_type = mimetypes.guess_type(relative)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type == "application/javascript":
        content_type += "; charset=utf-8"
    return text_response(200, body, content_type)
