"""The loaded rooms: loading a post's document on first use, unloading it when left empty."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from pycrdt import Doc

from rtc.documents import Documents
from rtc.errors import HeldTotalError, RoomUnavailableError, ServerBusyError
from rtc.heap import release_free_memory
from rtc.history import SessionHistory
from rtc.ids import RoomKey
from rtc.limits import HeldBytes, RoomLimits
from rtc.room import Room

__all__ = ["RoomRegistry", "SharedRooms"]

logger = logging.getLogger(__name__)

RELEASE_DELAY = 1.0  # seconds after an unload before freed memory goes back (one per burst)


class SharedRooms(Protocol):
    """How rooms are shared with other nodes (cluster mode)."""

    async def follow(self, key: RoomKey) -> None:
        """Before a room's document is loaded: hear what the other nodes say of it."""

    def loaded(self, key: RoomKey) -> None:
        """After: ask them for what the store did not have yet."""

    def unfollow(self, key: RoomKey) -> None:
        """The room was unloaded."""


class RoomRegistry:
    """Rooms by key, each loaded once from the store and unloaded after a grace period.

    Args:
        store: where documents live.
        limits: every room's admission limits.
        history: shared session history.
        grace: seconds an empty room stays loaded.
        task_group: where unload timers run.
        shared: the other nodes holding rooms (cluster mode), None on one node.
    """

    def __init__(
        self,
        store: Documents,
        *,
        limits: RoomLimits,
        history: SessionHistory,
        grace: float,
        task_group: TaskGroup,
        shared: SharedRooms | None = None,
    ) -> None:
        self._store = store
        self._limits = limits
        self._history = history
        self._grace = grace
        self._task_group = task_group
        self._shared = shared
        self._rooms: dict[RoomKey, Room] = {}
        # A key is here while its room is being loaded or compacted for unloading; whoever
        # wants it meanwhile waits, so a load never reads a half-compacted document.
        self._busy: dict[RoomKey, anyio.Event] = {}
        self._compacting: set[RoomKey] = set()
        self._release_pending = False
        # What newcomers hold, across every room: bounded by `limits.max_held_total`.
        self.held = HeldBytes(limits.max_held_total)

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, key: RoomKey) -> Room | None:
        return self._rooms.get(key)

    def loaded(self) -> list[Room]:
        return list(self._rooms.values())

    async def enter(self, key: RoomKey, *, max_rooms: int) -> Room:
        """The room of a post for a new connection, loaded if needed; the caller must `open()`
        the connection on it before its next await.

        Raises:
            HeldTotalError: newcomers already hold all the server holds for them.
            ServerBusyError: ``max_rooms`` are loaded (0: no limit) and this one is not.
            RoomUnavailableError: its document could not be loaded (a locked or corrupt
                store fails this connection, not the server).
        """
        if self.held.full:  # newcomers hold all we hold: come back later
            raise HeldTotalError(f"{self.held.total} bytes held from newcomers")
        if max_rooms and key not in self._rooms and len(self._rooms) >= max_rooms:
            raise ServerBusyError(f"{len(self._rooms)} rooms loaded")
        try:
            return await self.acquire(key)
        except Exception as error:
            logger.exception("room %s could not be loaded", key)
            raise RoomUnavailableError(str(error)) from error

    async def acquire(self, key: RoomKey) -> Room:
        """The room of a post, loading its document if needed.

        The caller must `open()` a connection on it before its next await, so that the room
        is not unloaded under it.
        """
        while True:
            room = self._rooms.get(key)
            if room is not None:
                return room
            busy = self._busy.get(key)
            if busy is not None:
                await busy.wait()
                continue
            busy = self._busy[key] = anyio.Event()
            try:
                if self._shared is not None:
                    await self._shared.follow(key)  # first, so nothing said meanwhile is lost
                updates = await self._store.load(key)
                doc: Doc[Any] = Doc()
                for update in updates:
                    doc.apply_update(update)
                self._rooms[key] = Room(
                    key,
                    doc,
                    limits=self._limits,
                    history=self._history,
                    held=self.held,
                    stored_bytes=sum(map(len, updates)),
                    shared=self._shared is not None,
                )
                logger.info("room %s loaded (%d stored updates)", key, len(updates))
                if self._shared is not None:
                    self._shared.loaded(key)
            except BaseException:
                if self._shared is not None:  # not loaded after all: stop hearing of it
                    self._shared.unfollow(key)
                raise
            finally:
                del self._busy[key]
                busy.set()

    def released(self, room: Room) -> None:
        """A connection left the room; an empty room is unloaded after the grace period."""
        if room.is_empty and self._rooms.get(room.key) is room:
            self._task_group.start_soon(self._unload_later, room)

    def persisted(self, room: Room) -> None:
        """An update of the room was queued; compact its rows when they pile up."""
        key = room.key
        if key not in self._compacting and self._store.wants_compaction(key):
            self._compacting.add(key)
            self._task_group.start_soon(self._compact, room)

    async def unload_all(self) -> None:
        """Write every loaded room's compacted state (at shutdown)."""
        for room in list(self._rooms.values()):
            await self._unload(room)

    async def _compact(self, room: Room) -> None:
        try:
            await self._store.compact(room.key, room.content.compacted)
        finally:
            self._compacting.discard(room.key)

    async def _unload_later(self, room: Room) -> None:
        await anyio.sleep(self._grace)
        if room.is_empty and self._rooms.get(room.key) is room:
            await self._unload(room)

    async def _unload(self, room: Room) -> None:
        key = room.key
        del self._rooms[key]
        busy = self._busy[key] = anyio.Event()
        try:
            await self._store.compact(key, room.content.compacted)
            self._store.forget(key)
            if self._shared is not None:
                self._shared.unfollow(key)
            logger.info("room %s unloaded", key)
        finally:
            room.content.close()
            del self._busy[key]
            busy.set()
            if not self._release_pending:
                self._release_pending = True
                self._task_group.start_soon(self._release_memory_later)

    async def _release_memory_later(self) -> None:
        """Once a burst of unloads is over, hand what their documents held back to the OS: the
        allocator keeps freed pages otherwise, and a server that was busy would stay at its
        busiest size (one trim, about a millisecond, for the whole burst)."""
        await anyio.sleep(RELEASE_DELAY)
        self._release_pending = False
        release_free_memory()
