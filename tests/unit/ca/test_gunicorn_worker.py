"""The shared per-worker connection counts that spread keep-alive connections over workers."""

from __future__ import annotations

from types import SimpleNamespace

from ca.gunicorn_worker import BalancedThreadWorker, ConnectionCounts, child_exit, pre_fork


def test_slots_are_handed_out_once_and_come_back_when_a_worker_exits():
    counts = ConnectionCounts(3)
    assert counts.assign(set()) == 0
    assert counts.assign({0}) == 1
    assert counts.assign({0, 1}) == 2
    assert counts.assign({0, 1, 2}) is None  # full: that worker simply does not balance
    counts.release(1)
    assert counts.assign({0, 2}) == 1


def test_free_slots_and_the_worker_itself_are_left_out_of_the_comparison():
    counts = ConnectionCounts(4)
    for slot in (0, 1, 2):
        counts.assign(set(range(slot)))
    counts.publish(0, 9)
    counts.publish(1, 3)
    counts.publish(2, 5)
    assert counts.least_loaded_other(0) == 3
    assert counts.least_loaded_other(1) == 5
    counts.release(1)
    assert counts.least_loaded_other(0) == 5
    counts.release(2)
    assert counts.least_loaded_other(0) is None  # alone: never waits


def test_a_reassigned_slot_starts_from_zero_not_from_the_exited_workers_count():
    counts = ConnectionCounts(2)
    counts.assign(set())
    counts.assign({0})
    counts.publish(1, 40)
    counts.release(1)
    assert counts.assign({0}) == 1
    assert counts.least_loaded_other(0) == 0


def test_arbiter_hooks_assign_and_release_slots(monkeypatch):
    counts = ConnectionCounts(4)
    monkeypatch.setattr(BalancedThreadWorker, "counts", counts)
    first, second = SimpleNamespace(slot=None), SimpleNamespace(slot=None)
    server = SimpleNamespace(WORKERS={})
    pre_fork(server, first)
    server.WORKERS[1] = first
    pre_fork(server, second)
    server.WORKERS[2] = second
    assert (first.slot, second.slot) == (0, 1)
    child_exit(server, first)
    del server.WORKERS[1]
    assert counts.least_loaded_other(1) is None


def test_a_worker_holding_more_connections_than_another_is_the_busier_one():
    counts = ConnectionCounts(3)
    for slot in (0, 1):
        counts.assign(set(range(slot)))
    counts.publish(0, 5)
    counts.publish(1, 5)
    assert not counts.busier_than_another(0)  # level: both run their own jobs
    counts.publish(1, 4)
    assert counts.busier_than_another(0) and not counts.busier_than_another(1)
    counts.release(1)
    assert not counts.busier_than_another(0)  # alone


def test_a_worker_without_a_slot_never_defers():
    worker = BalancedThreadWorker.__new__(BalancedThreadWorker)
    worker.slot = None
    assert not worker.busier_than_another()
