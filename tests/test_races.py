"""The happens-before checker on hand-written logs: it finds races, and only races."""

from __future__ import annotations

import pytest

from lightning_mosaic.engine.races import Entry, HappensBefore, find_races


def launch(stream, reads=(), writes=(), op="k"):
    return Entry("launch", stream, op=op, reads=tuple(reads), writes=tuple(writes))


def record(stream, event):
    return Entry("record", stream, event=event)


def wait(stream, event):
    return Entry("wait", stream, event=event)


def test_same_stream_is_ordered():
    log = [launch("a", writes=[1]), launch("a", reads=[1])]
    assert find_races(log) == []


def test_read_after_write_without_wait_is_a_race():
    log = [launch("a", writes=[1]), launch("b", reads=[1])]
    [race] = find_races(log)
    assert (race.kind, race.key, race.earlier, race.later) == ("read-after-write", 1, 0, 1)
    assert "read-after-write race on memory 0x1: [1] launch" in race.describe(log)


def test_record_then_wait_orders_the_streams():
    log = [launch("a", writes=[1]), record("a", 7), wait("b", 7), launch("b", reads=[1])]
    assert find_races(log) == []


def test_an_event_recorded_before_the_write_does_not_cover_it():
    log = [record("a", 7), launch("a", writes=[1]), wait("b", 7), launch("b", reads=[1])]
    assert [r.kind for r in find_races(log)] == ["read-after-write"]


def test_ordering_is_transitive_through_a_third_stream():
    log = [
        launch("a", writes=[1]),
        record("a", 1),
        wait("c", 1),
        launch("c"),
        record("c", 2),
        wait("b", 2),
        launch("b", reads=[1]),
    ]
    assert find_races(log) == []


def test_write_after_read_and_write_after_write_only_for_long_lived_memory():
    log = [launch("a", reads=[5]), launch("b", writes=[5]), launch("a", writes=[5])]
    assert find_races(log) == [], "short-lived memory: reuse is the allocator's business"
    kinds = sorted(r.kind for r in find_races(log, long_lived=[5]))
    assert kinds == ["write-after-read", "write-after-write"]


def test_waiting_on_an_unrecorded_event_is_an_error():
    with pytest.raises(ValueError, match=r"\[0\] wait .* waits on event 3, which was never recorded"):
        find_races([wait("b", 3)])


def test_concurrency_queries():
    log = [
        launch("caller"),  # 0
        record("caller", 1),
        wait("a", 1),
        wait("b", 1),
        launch("a"),  # 4
        launch("b"),  # 5
        record("a", 2),
        wait("caller", 2),
        launch("caller"),  # 8
    ]
    hb = HappensBefore(log)
    assert hb.ordered(0, 4) and hb.ordered(0, 5) and hb.ordered(4, 8)
    assert not hb.ordered(5, 8), "the caller never waited for b"
    assert hb.concurrent([4], [5])
    assert not hb.concurrent([0], [4])
    assert hb.launches(lambda e: e.stream == "a") == [4]
