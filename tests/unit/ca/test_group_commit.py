"""Group commit: threads share transactions, each gets its own result or error, nothing leaks."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select

from ca.storage.group_commit import BatchOperation, GroupCommit, GroupCommitFailed
from ca.storage.models import JobRow


def add_job(session, name: str) -> str:
    now = datetime.now(UTC)
    session.execute(
        insert(JobRow).values(
            kind=name,
            payload="{}",
            status="queued",
            run_at=now,
            attempts=0,
            max_attempts=1,
            created_at=now,
        )
    )
    return name


def kinds(database) -> list[str]:
    with database.read() as session:
        return sorted(session.scalars(select(JobRow.kind)))


def test_a_lone_unit_commits_and_returns_its_result(database):
    group = GroupCommit(database)
    assert group.run(lambda s: add_job(s, "one")) == "one"
    assert kinds(database) == ["one"] and group.batches == 1


def test_units_queued_behind_a_running_batch_share_the_next_commit(database):
    group = GroupCommit(database)
    release = threading.Event()
    results: dict[str, object] = {}

    def slow_first(session):
        release.wait(30)
        return add_job(session, "first")

    def call(name, work):
        try:
            results[name] = group.run(work)
        except Exception as exc:
            results[name] = exc

    first = threading.Thread(target=call, args=("first", slow_first))
    first.start()
    deadline = time.monotonic() + 10
    while not group._busy and time.monotonic() < deadline:
        time.sleep(0.001)
    followers = [
        threading.Thread(target=call, args=(f"f{i}", lambda s, i=i: add_job(s, f"f{i}")))
        for i in range(5)
    ]
    for thread in followers:
        thread.start()
    while len(group._queue) < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for thread in (first, *followers):
        thread.join(30)
    assert results == {"first": "first", **{f"f{i}": f"f{i}" for i in range(5)}}
    assert group.batches == 2  # the first alone, then all five followers in one transaction
    assert kinds(database) == sorted(["first", *(f"f{i}" for i in range(5))])


def test_a_failing_unit_gets_its_own_error_and_the_others_still_commit(database):
    group = GroupCommit(database)
    release = threading.Event()
    results: dict[str, object] = {}

    def blocker(session):
        release.wait(30)
        return add_job(session, "blocker")

    def broken(session):
        add_job(session, "broken")
        raise ValueError("this unit fails")

    def call(name, work):
        try:
            results[name] = group.run(work)
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=call, args=("blocker", blocker))]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not group._busy and time.monotonic() < deadline:
        time.sleep(0.001)
    for name, work in (
        ("a", lambda s: add_job(s, "a")),
        ("broken", broken),
        ("b", lambda s: add_job(s, "b")),
    ):
        thread = threading.Thread(target=call, args=(name, work))
        thread.start()
        threads.append(thread)
        while len(group._queue) < len(threads) - 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    release.set()
    for thread in threads:
        thread.join(30)
    assert isinstance(results["broken"], ValueError)
    assert (results["a"], results["b"], results["blocker"]) == ("a", "b", "blocker")
    assert kinds(database) == ["a", "b", "blocker"]  # nothing of the broken unit


def test_many_threads_all_commit_exactly_once(database):
    group = GroupCommit(database)
    errors: list[Exception] = []

    def worker(t: int) -> None:
        for i in range(25):
            try:
                group.run(lambda s, t=t, i=i: add_job(s, f"t{t}-{i}"))
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == 200
    assert group.batches <= 200


def test_a_failed_commit_is_reported_to_every_unit_of_the_batch(database, monkeypatch):
    group = GroupCommit(database)

    class Boom(Exception):
        pass

    def explode():
        raise Boom("database went away")

    monkeypatch.setattr(database, "write_connection", explode)
    with pytest.raises(GroupCommitFailed) as failed:
        group.run(lambda s: add_job(s, "never"))
    assert isinstance(failed.value.__cause__, Boom)
    monkeypatch.undo()
    assert kinds(database) == []
    assert group.run(lambda s: add_job(s, "after")) == "after"  # the group is usable again


def test_a_slow_batch_delays_but_never_strands_the_units_behind_it(database):
    group = GroupCommit(database)
    release = threading.Event()
    results: dict[str, object] = {}

    def slow(session):
        release.wait(30)
        return add_job(session, "slow")

    def call(name, work):
        results[name] = group.run(work)

    threads = [threading.Thread(target=call, args=("slow", slow))]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not group._busy and time.monotonic() < deadline:
        time.sleep(0.001)
    for i in range(3):
        thread = threading.Thread(target=call, args=(f"w{i}", lambda s, i=i: add_job(s, f"w{i}")))
        thread.start()
        threads.append(thread)
    time.sleep(0.2)  # the followers wait, however long the leader takes
    release.set()
    for thread in threads:
        thread.join(30)
    assert results == {"slow": "slow", "w0": "w0", "w1": "w1", "w2": "w2"}
    assert not group._busy and group._queue == []
    assert group.run(lambda s: add_job(s, "later")) == "later"


def _queue_behind_a_blocker(group, units):
    """Run `units` (name -> callable) on threads while a first unit holds the leadership, so
    they all land in the next batch; returns name -> result or exception."""
    release = threading.Event()
    results: dict[str, object] = {}

    def call(name, run):
        try:
            results[name] = run()
        except Exception as exc:
            results[name] = exc

    def blocker(session):
        release.wait(30)
        return add_job(session, "blocker")

    threads = [threading.Thread(target=call, args=("blocker", lambda: group.run(blocker)))]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not group._busy and time.monotonic() < deadline:
        time.sleep(0.001)
    for name, run in units.items():
        thread = threading.Thread(target=call, args=(name, run))
        thread.start()
        threads.append(thread)
        while len(group._queue) < len(threads) - 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    release.set()
    for thread in threads:
        thread.join(30)
    return results


def test_batched_units_of_one_operation_are_done_in_one_set_based_call(database):
    group = GroupCommit(database)
    calls: list[list[str]] = []

    def add_many(session, names):
        calls.append(list(names))
        return [add_job(session, name) for name in names]

    operation = BatchOperation("add", run_one=add_job, run_many=add_many)
    names = [f"n{i}" for i in range(5)]
    results = _queue_behind_a_blocker(
        group, {name: lambda name=name: group.run_batched(operation, name) for name in names}
    )
    assert results == {"blocker": "blocker", **{name: name for name in names}}
    assert calls == [names]  # one call for the whole batch, in arrival order
    assert group.batches == 2 and group.set_based_fallbacks == 0
    assert kinds(database) == sorted(["blocker", *names])


def test_a_failing_set_based_call_falls_back_so_only_the_faulty_unit_fails(database):
    group = GroupCommit(database)

    def add_one(session, name):
        if name == "bad":
            add_job(session, "bad")
            raise ValueError("this item is refused")
        return add_job(session, name)

    def add_many(session, names):
        return [add_one(session, name) for name in names]  # raises for "bad": all rolled back

    operation = BatchOperation("add", run_one=add_one, run_many=add_many)
    results = _queue_behind_a_blocker(
        group,
        {
            "a": lambda: group.run_batched(operation, "a"),
            "bad": lambda: group.run_batched(operation, "bad"),
            "plain": lambda: group.run(lambda s: add_job(s, "plain")),
            "b": lambda: group.run_batched(operation, "b"),
        },
    )
    assert isinstance(results["bad"], ValueError)
    assert (results["a"], results["b"], results["plain"]) == ("a", "b", "plain")
    assert group.set_based_fallbacks == 1
    assert kinds(database) == ["a", "b", "blocker", "plain"]  # nothing of the refused unit


def test_a_lone_units_own_error_reaches_its_caller_unwrapped(database):
    group = GroupCommit(database)

    def broken(session):
        add_job(session, "broken")
        raise KeyError("this unit fails")

    with pytest.raises(KeyError):
        group.run(broken)
    assert kinds(database) == []
    assert group.run(lambda s: add_job(s, "after")) == "after"
