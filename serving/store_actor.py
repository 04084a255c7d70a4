"""The MPC sessions of a Serve app, shared by all its replicas: one :class:`MemorySessionStore` in a Ray actor.

The actor is a Serve *deployment-scoped actor* (``deployment_actors`` in :func:`serving.app.build_app`): the
Serve controller starts it with the deployment, health-checks and recreates it, and removes it with the
app. So any replica answers any session, a replica that dies loses nothing, and no actor outlives the app.
The sessions themselves live in one process: a store actor that is recreated starts empty (clients get 404
and open a new session).

:class:`ActorSessionStore` is the ``SessionStore`` the replica's :class:`~serving.service.PlanningService`
talks to; its calls block, so they run on the planner thread, never on the replica's event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

from serving.sessions import MemorySessionStore, RequestError, SessionRecord


class SessionActor(MemorySessionStore):
    """The store behind one method, :meth:`call`, that returns a refusal instead of raising it."""

    def call(self, method: str, *args: Any) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, (status, field, message))`` of the ``RequestError`` it raised
        (whose constructor arguments an exception pickle would not restore)."""
        try:
            return True, getattr(self, method)(*args)
        except RequestError as e:
            return False, (e.status, e.field, e.message)

    def count(self) -> int:
        return len(self)  # Ray actors expose no __len__


SessionStoreActor = ray.remote(SessionActor)


class ActorSessionStore:
    """``SessionStore`` over the actor that ``lookup()`` returns.

    A handle that points at a store actor Serve has since recreated fails with ``RayActorError``: the handle
    is looked up again and the call retried once (the controller may need a moment to register the new
    actor). A ``RequestError`` (404, 429) raised in the actor is raised here again.
    """

    def __init__(self, lookup: Callable[[], Any], ttl_s: float, *, retry_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._lookup = lookup
        self._actor: Any = None
        self._retry_s = retry_s

    def create(self, record: SessionRecord) -> str:
        return self._call("create", record)

    def get(self, session_id: str) -> SessionRecord:
        return self._call("get", session_id)

    def put(self, session_id: str, record: SessionRecord) -> None:
        self._call("put", session_id, record)

    def delete(self, session_id: str) -> None:
        self._call("delete", session_id)

    def count(self) -> int:
        return self._call("count")

    def _handle(self) -> Any:
        deadline = time.monotonic() + self._retry_s
        while self._actor is None:
            try:
                self._actor = self._lookup()
            except ValueError:  # being recreated: not registered under its name yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self._actor

    def _call(self, method: str, *args: Any) -> Any:
        for attempt in range(2):
            try:
                ok, value = ray.get(self._handle().call.remote(method, *args))
            except ray.exceptions.RayActorError:
                self._actor = None
                if attempt:
                    raise
                continue
            if not ok:
                raise RequestError(*value)
            return value
        raise AssertionError("unreachable")
