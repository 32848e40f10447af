"""Offsets are committed only up to the oldest command whose job has not ended."""

from __future__ import annotations

from model_trainer.offsets import OffsetTracker
from model_trainer.records import TP as Partition

TP = Partition("jobs", 0)


def test_out_of_order_finishes_commit_only_the_finished_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.add(TP, offset)
    assert tracker.finish(TP, 12) is None  # 10 and 11 still run
    assert tracker.finish(TP, 11) is None
    assert tracker.finish(TP, 10) == 13  # 10, 11, 12 done: commit up to 13
    assert tracker.unfinished() == 1
    assert tracker.finish(TP, 13) == 14


def test_partitions_are_independent_and_forgotten_on_revoke() -> None:
    tracker = OffsetTracker()
    other = Partition("jobs", 1)
    tracker.add(TP, 0)
    tracker.add(other, 5)
    assert tracker.finish(other, 5) == 6
    tracker.forget([TP])
    assert tracker.finish(TP, 0) is None
    assert tracker.unfinished() == 0


def test_unknown_offsets_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 3)
    assert tracker.finish(TP, 99) is None
    assert tracker.unfinished() == 1
