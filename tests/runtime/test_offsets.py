"""Offsets are committed only up to the oldest command whose job has not ended."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st
from model_trainer.book.offsets import OffsetTracker
from model_trainer.book.records import TP as Partition

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


def test_memory_stays_bounded_behind_a_long_job() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 0)  # a long job holds the partition back
    most = 0
    for offset in range(1, 100_001):  # a flood answered at once behind it
        tracker.add(TP, offset)
        assert tracker.finish(TP, offset) is None
        most = max(most, tracker.held())
    assert most < 200
    assert tracker.finish(TP, 0) == 100_001


@given(
    st.lists(st.integers(1, 3), min_size=1, max_size=40),
    st.randoms(use_true_random=False),
)
def test_commits_match_the_definition(gaps: list[int], rng: random.Random) -> None:
    """Offsets with gaps (transaction markers), finished in any order: each commit is the
    oldest unfinished offset or one past the newest finished, whichever is lower; never
    backwards, never past an unfinished one."""
    offsets = list(itertools.accumulate(gaps))
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.add(TP, offset)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    last = offsets[0]
    for offset in order:
        finished.add(offset)
        got = tracker.finish(TP, offset)
        unfinished = [o for o in offsets if o not in finished]
        newest = max(finished) + 1
        expected = min(unfinished[0], newest) if unfinished else newest
        if got is None:
            assert expected == last
        else:
            assert got == expected
            assert got > last
            last = got
    assert last == offsets[-1] + 1
