"""BasicVerifier on its own, on SQLite and PostgreSQL: what its cache may and may not skip.

The app-level tests (test_est_app.py) show a deleted or re-created credential failing at once
with the default settings; these pin down the shared argon2 run for concurrent requests, the
bounded cache and the opt-in `basic_recheck_seconds` window, with a hand-driven clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from ca.storage import Database
from est_server import auth, storage
from est_server.auth import BasicVerifier, password_hasher
from est_server.config import PasswordHashParams

PARAMS = PasswordHashParams(time_cost=1, memory_kib=8192, parallelism=1)
PASSWORD = "correct horse battery staple"


class CountingHasher:
    """Wraps the argon2 hasher to count verifications, optionally waiting at a barrier first."""

    def __init__(self, inner: Any, before_verify: Callable[[], None] = lambda: None) -> None:
        self.inner = inner
        self.before_verify = before_verify
        self.verifications = 0
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        return self.inner.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        with self._lock:
            self.verifications += 1
        self.before_verify()
        return self.inner.verify(password_hash, password)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _add_user(database: Database, username: str, password: str = PASSWORD) -> None:
    password_hash = password_hasher(PARAMS).hash(password)
    with database.write() as session:
        storage.insert_user(session, username, None, password_hash, "test", datetime.now(UTC))


def _delete_user(database: Database, username: str) -> None:
    with database.write() as session:
        storage.delete_user(session, username)


def _verifier(database: Database, **kwargs: Any) -> tuple[BasicVerifier, CountingHasher]:
    verifier = BasicVerifier(database, PARAMS, kwargs.pop("cache_seconds", 300), **kwargs)
    counting = CountingHasher(verifier.hasher)
    verifier.hasher = counting  # type: ignore[assignment]
    return verifier, counting


def _verify_together(verifier: BasicVerifier, count: int, password: str) -> list[Any]:
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def one(index: int) -> None:
        start.wait(10)
        results[index] = verifier.verify("fleet", password, "default")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_concurrent_requests_with_one_credential_share_one_argon2_run(database):
    _add_user(database, "fleet")
    verifier, counting = _verifier(database)
    results = _verify_together(verifier, 6, PASSWORD)
    assert all(user is not None and user.username == "fleet" for user in results)
    assert counting.verifications == 1


def test_concurrent_wrong_passwords_each_run_argon2_and_all_fail(database):
    _add_user(database, "fleet")
    verifier, counting = _verifier(database)
    results = _verify_together(verifier, 4, "not the password at all")
    assert results == [None] * 4
    assert counting.verifications == 4
    # Nothing was remembered: the right password still needs its own verification.
    assert verifier.verify("fleet", PASSWORD, "default") is not None
    assert counting.verifications == 5


def test_a_credential_verified_by_another_thread_meanwhile_skips_argon2(database):
    """The second request waits for the first one's argon2 run, then finds it remembered."""
    _add_user(database, "fleet")
    verifier, counting = _verifier(database)
    first_inside = threading.Event()
    release = threading.Event()

    def hold_first() -> None:
        first_inside.set()
        release.wait(10)

    counting.before_verify = hold_first
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(verifier.verify("fleet", PASSWORD, "d")))
    first.start()
    assert first_inside.wait(10)
    counting.before_verify = lambda: None
    second = threading.Thread(
        target=lambda: results.append(verifier.verify("fleet", PASSWORD, "d"))
    )
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert len(results) == 2 and all(user is not None for user in results)
    assert counting.verifications == 1


def test_the_cache_is_bounded_and_forgets_the_oldest_first(database, monkeypatch):
    monkeypatch.setattr(auth, "_CACHE_LIMIT", 2)
    for name in ("dev-a", "dev-b", "dev-c"):
        _add_user(database, name)
    verifier, counting = _verifier(database)
    for name in ("dev-a", "dev-b", "dev-c"):
        assert verifier.verify(name, PASSWORD, "default") is not None
    assert counting.verifications == 3
    assert verifier.verify("dev-c", PASSWORD, "default") is not None
    assert counting.verifications == 3
    assert verifier.verify("dev-a", PASSWORD, "default") is not None  # evicted: argon2 again
    assert counting.verifications == 4


def test_remembered_verification_expires_after_basic_cache_seconds(database):
    _add_user(database, "dev-a")
    clock = Clock()
    verifier, counting = _verifier(database, cache_seconds=60, clock=clock)
    assert verifier.verify("dev-a", PASSWORD, "default") is not None
    clock.now += 59
    assert verifier.verify("dev-a", PASSWORD, "default") is not None
    assert counting.verifications == 1
    clock.now += 2
    assert verifier.verify("dev-a", PASSWORD, "default") is not None
    assert counting.verifications == 2


def test_without_recheck_a_deleted_credential_fails_on_the_next_request(database):
    _add_user(database, "dev-a")
    verifier, _ = _verifier(database, clock=Clock())
    assert verifier.verify("dev-a", PASSWORD, "default") is not None
    _delete_user(database, "dev-a")
    assert verifier.verify("dev-a", PASSWORD, "default") is None


def test_recheck_window_bounds_how_long_a_deleted_credential_keeps_working(database):
    _add_user(database, "dev-a")
    clock = Clock()
    verifier, _ = _verifier(database, recheck_seconds=10, clock=clock)
    assert verifier.verify("dev-a", PASSWORD, "default") is not None
    _delete_user(database, "dev-a")
    # The documented trade-off: inside the window the row is not read again ...
    clock.now += 9
    assert verifier.verify("dev-a", PASSWORD, "default") is not None
    # ... but a wrong password never rides on it, and after the window the deletion shows.
    assert verifier.verify("dev-a", "a wrong password here", "default") is None
    clock.now += 2
    assert verifier.verify("dev-a", PASSWORD, "default") is None


def test_recheck_window_sees_a_recreated_credential_after_it_ends(database):
    _add_user(database, "dev-a")
    clock = Clock()
    verifier, _ = _verifier(database, recheck_seconds=10, clock=clock)
    assert verifier.verify("dev-a", PASSWORD, "default") is not None
    _delete_user(database, "dev-a")
    _add_user(database, "dev-a", "a new long password")
    clock.now += 11
    assert verifier.verify("dev-a", PASSWORD, "default") is None
    assert verifier.verify("dev-a", "a new long password", "default") is not None


def test_recheck_window_never_outlasts_the_cache(database):
    verifier, _ = _verifier(database, cache_seconds=5, recheck_seconds=60)
    assert verifier.recheck_seconds == 5


@pytest.mark.parametrize("wrong", ["", "correct horse battery stapl", PASSWORD + " "])
def test_remembered_credential_does_not_open_for_a_different_password(database, wrong):
    _add_user(database, "dev-a")
    verifier, _ = _verifier(database, recheck_seconds=30, clock=Clock())
    assert verifier.verify("dev-a", PASSWORD, "default") is not None
    assert verifier.verify("dev-a", wrong, "default") is None
