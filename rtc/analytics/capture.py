"""Capture control: per-blog switch and sampling rate, changeable at runtime and persisted.

An operator can stop recording a site (a privacy request, a noisy site) without a restart.
The settings live in one small JSON file, rewritten atomically on each change. In cluster
mode they live in Redis instead (`rtc.cluster.controls`), which keeps this object's view
current (`replace`) and takes the changes; the file is not used then.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BlogCapture", "CaptureSettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BlogCapture:
    """Whether a blog's events are recorded, and which fraction of its sessions."""

    enabled: bool = True
    sample_rate: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError("sample_rate must be between 0 and 1")

    def to_json(self) -> dict[str, object]:
        return {"enabled": self.enabled, "sample_rate": self.sample_rate}


class CaptureSettings:
    """Per-blog capture settings, loaded from and saved to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._blogs: dict[int, BlogCapture] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self._blogs = {int(blog): BlogCapture(**value) for blog, value in raw.items()}
            except (ValueError, TypeError) as error:
                raise ValueError(f"{path}: unreadable capture settings: {error}") from None

    def for_blog(self, blog_id: int) -> BlogCapture:
        return self._blogs.get(blog_id, BlogCapture())

    def set(self, blog_id: int, capture: BlogCapture) -> None:
        """Change a blog's settings and persist them before returning."""
        blogs = dict(self._blogs)
        if capture == BlogCapture():
            blogs.pop(blog_id, None)
        else:
            blogs[blog_id] = capture
        payload = json.dumps({str(blog): value.to_json() for blog, value in blogs.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.path.parent, prefix=".capture-", delete=False
        ) as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, self.path)
        self._blogs = blogs
        logger.info("capture for blog %d: %s", blog_id, capture.to_json())

    def replace(self, blogs: dict[int, BlogCapture]) -> None:
        """Take these settings as the current ones, without persisting them (cluster mode:
        they are the cluster's, read from Redis)."""
        self._blogs = {blog: capture for blog, capture in blogs.items() if capture != BlogCapture()}

    def to_json(self) -> dict[str, object]:
        return {str(blog): value.to_json() for blog, value in sorted(self._blogs.items())}

    @staticmethod
    def parse(raw: str) -> BlogCapture:
        """One blog's settings from their JSON (`BlogCapture.to_json`); raises ValueError."""
        try:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise TypeError("not an object")
            return BlogCapture(**value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"unreadable capture settings: {error}") from None
