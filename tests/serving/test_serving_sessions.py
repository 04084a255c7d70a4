"""MemorySessionStore: ids, idle TTL (refreshed by use), the bound on live sessions, 404s, thread safety."""

import threading

import pytest

from serving.sessions import MemorySessionStore, RequestError, SessionRecord

REC = SessionRecord(goal=b"goal", planner="{}", state=b"state", model="m")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _status(fn, *args) -> tuple[int, str | None]:
    with pytest.raises(RequestError) as e:
        fn(*args)
    return e.value.status, e.value.field


def test_create_get_put_delete_round_trip():
    store = MemorySessionStore()
    sid = store.create(REC)
    assert store.get(sid) == REC
    newer = SessionRecord(goal=b"goal", planner="{}", state=b"state 2", model="m")
    store.put(sid, newer)
    assert store.get(sid) == newer and len(store) == 1
    store.delete(sid)
    assert _status(store.get, sid) == (404, "session_id")
    assert _status(store.delete, sid) == (404, "session_id")
    assert _status(store.put, sid, REC) == (404, "session_id")


def test_ids_are_unguessable_url_safe_and_distinct():
    store = MemorySessionStore()
    ids = {store.create(REC) for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) >= 20 and all(c.isalnum() or c in "-_" for c in i) for i in ids)


def test_sessions_expire_after_the_idle_ttl_and_use_refreshes_it():
    clock = Clock()
    store = MemorySessionStore(ttl_s=10, clock=clock)
    used, idle = store.create(REC), store.create(REC)
    clock.t += 8
    store.get(used)
    clock.t += 8  # used: idle 8 s, idle: 16 s
    assert store.get(used) == REC
    assert _status(store.get, idle) == (404, "session_id")
    clock.t += 10.5
    assert _status(store.put, used, REC) == (404, "session_id")
    assert len(store) == 0


def test_the_bound_refuses_one_more_session_until_one_expires_or_is_deleted():
    clock = Clock()
    store = MemorySessionStore(ttl_s=10, max_sessions=2, clock=clock)
    first = store.create(REC)
    store.create(REC)
    assert _status(store.create, REC) == (429, None)
    store.delete(first)
    clock.t += 5
    third = store.create(REC)
    assert _status(store.create, REC) == (429, None)
    clock.t += 6  # the second expires (idle 11 s), the third lives (idle 6 s)
    store.create(REC)
    assert store.get(third) == REC and len(store) == 2


def test_concurrent_creates_respect_the_bound():
    store = MemorySessionStore(max_sessions=64)
    made, refused = [], []

    def worker():
        for _ in range(20):
            try:
                made.append(store.create(REC))
            except RequestError as e:
                refused.append(e.status)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 64 and refused == [429] * (160 - 64) and len(store) == 64


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        MemorySessionStore(ttl_s=0)
    with pytest.raises(ValueError):
        MemorySessionStore(max_sessions=0)


def test_a_request_error_names_its_field_in_its_detail():
    e = RequestError(422, "planner.topk", "must not exceed num_samples")
    assert (e.status, e.field, e.detail) == (422, "planner.topk", "planner.topk: must not exceed num_samples")
    assert RequestError(429, None, "too many").detail == "too many"
