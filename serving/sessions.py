"""Where MPC sessions live between ``act`` calls (docs/serving.md, sessions).

A session is a :class:`SessionRecord` of plain data (bytes and strings: the encoded goal as safetensors, the
planner settings as JSON, the planner's ``PlanState.to_bytes()``), so a store can sit in another process (the
Serve app keeps one in a named Ray actor) and any replica can continue any session.
:class:`MemorySessionStore` is the in-process store: an idle TTL, a bound on live sessions, a lock.

Standard library only (no torch): the store's process needs nothing else.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RequestError(Exception):
    """A request the service refuses: ``status`` (400 malformed, 404 unknown session, 413 too large, 422
    invalid for this model, 429 too many sessions), the dotted ``field`` it names (or None), ``message``."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status, self.field, self.message = status, field, message

    @property
    def detail(self) -> str:
        """The message naming the field: an error body's ``detail``."""
        return str(self)

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.field!r}, {self.message!r})"


@dataclass(frozen=True)
class SessionRecord:
    """One session: ``goal`` safetensors bytes of the encoded goal latents, ``planner`` the request's
    planner settings as JSON (``PlannerParams``), ``state`` the planner's ``PlanState.to_bytes()``,
    ``model`` the config digest of the model that encoded the goal."""

    goal: bytes
    planner: str
    state: bytes
    model: str = ""


class SessionStore(Protocol):
    """Sessions by id; unknown or expired ids raise ``RequestError(404, "session_id", ...)``."""

    ttl_s: float

    def create(self, record: SessionRecord) -> str: ...

    def get(self, session_id: str) -> SessionRecord: ...

    def put(self, session_id: str, record: SessionRecord) -> None: ...

    def delete(self, session_id: str) -> None: ...


class MemorySessionStore:
    """Sessions in a dict: each expires ``ttl_s`` seconds after its last use (``get``/``put``); at most
    ``max_sessions`` live at once (one more -> 429). ``clock`` is injectable for tests. Thread-safe."""

    def __init__(
        self, ttl_s: float = 600.0, max_sessions: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0 or max_sessions < 1:
            raise ValueError(f"need ttl_s > 0 and max_sessions >= 1, got {ttl_s}, {max_sessions}")
        self.ttl_s, self.max_sessions, self.clock = float(ttl_s), int(max_sessions), clock
        self._items: dict[str, tuple[SessionRecord, float]] = {}  # id -> (record, last use)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._items)

    def create(self, record: SessionRecord) -> str:
        with self._lock:
            now = self.clock()
            self._expire(now)
            if len(self._items) >= self.max_sessions:
                raise RequestError(
                    429, None, f"too many live sessions ({self.max_sessions}); delete one or retry later"
                )
            session_id = secrets.token_urlsafe(16)
            self._items[session_id] = (record, now)
            return session_id

    def get(self, session_id: str) -> SessionRecord:
        with self._lock:
            now = self.clock()
            record = self._live(session_id, now)
            self._items[session_id] = (record, now)
            return record

    def put(self, session_id: str, record: SessionRecord) -> None:
        with self._lock:
            now = self.clock()
            self._live(session_id, now)
            self._items[session_id] = (record, now)

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._live(session_id, self.clock())
            del self._items[session_id]

    def _live(self, session_id: str, now: float) -> SessionRecord:
        item = self._items.get(session_id)
        if item is not None and now - item[1] > self.ttl_s:
            del self._items[session_id]
            item = None
        if item is None:
            raise RequestError(404, "session_id", f"no session {session_id!r} (unknown or expired)")
        return item[0]

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, used) in self._items.items() if now - used > self.ttl_s]:
            del self._items[key]
