"""The job lifecycle's table (book/lifecycle.py): what it allows, what it refuses, and its
shape: every state reachable, every job able to leave the book, only the terminal states
without a way out. The book's property machines check it at every step of their runs."""

from __future__ import annotations

import pytest
from model_trainer.book.effects import Kill, Stop
from model_trainer.book.jobs import Job
from model_trainer.book.lifecycle import RUNS, TRANSITIONS, LifecycleError, State, step
from model_trainer.book.records import TP
from model_trainer.core.stop import StopReason

from .book_helpers import TOPIC, cancel, commits, is_terminal, new_book, published, record, submit

ALLOWED = [(a, b) for a in State for b in sorted(TRANSITIONS[a])]
FORBIDDEN = [(a, b) for a in State for b in State if b not in TRANSITIONS[a]]
TERMINAL = [State.ENDED, State.LEFT]


def _reachable(start: State) -> list[State]:
    seen, todo = [start], [start]
    while todo:
        for nxt in sorted(TRANSITIONS[todo.pop()]):
            if nxt not in seen:
                seen.append(nxt)
                todo.append(nxt)
    return sorted(seen)


def _job() -> Job:
    return Job(
        spec=submit("j"),
        digest="d",
        record=TP(TOPIC, 0),
        offset=0,
        submitted_at=0.0,
        attempt=0,
        failures=0,
        next_seq=0,
    )


def test_the_table_names_every_state_and_only_states() -> None:
    assert sorted(TRANSITIONS) == sorted(State)
    assert all(to <= set(State) for to in TRANSITIONS.values())
    assert len(ALLOWED) + len(FORBIDDEN) == len(State) ** 2


@pytest.mark.parametrize(("current", "to"), ALLOWED)
def test_every_allowed_step_is_taken(current: State, to: State) -> None:
    assert step("j", current, to) is to


@pytest.mark.parametrize(("current", "to"), FORBIDDEN)
def test_every_other_step_is_refused_as_a_bug_in_the_book(current: State, to: State) -> None:
    with pytest.raises(LifecycleError) as refused:
        step("j", current, to)
    message = str(refused.value)
    assert f"from {current} to {to}" in message
    assert "bug in the job book" in message


def test_a_refusal_says_where_the_job_could_have_gone() -> None:
    with pytest.raises(LifecycleError, match=r"allowed: ended, left\)"):
        step("j", State.CANCELLING, State.QUEUED)
    with pytest.raises(LifecycleError, match="allowed: nothing: it is terminal"):
        step("j", State.ENDED, State.QUEUED)


def test_every_state_is_reachable_from_a_new_job() -> None:
    assert _reachable(State.NEW) == sorted(State)
    assert _reachable(State.QUEUED) == sorted(set(State) - {State.NEW})


def test_only_the_terminal_states_have_no_way_out() -> None:
    assert [s for s in State if not TRANSITIONS[s]] == TERMINAL


def test_every_job_can_leave_the_book() -> None:
    """No state is a trap: from each, an end (or the hand-over to the next owner) is near."""
    for state in State:
        assert set(TERMINAL) & set(_reachable(state)), state


def test_a_cancelled_run_never_runs_or_queues_again() -> None:
    assert _reachable(State.CANCELLING) == sorted([State.CANCELLING, *TERMINAL])


def test_a_run_handed_back_is_never_queued_again_by_this_owner() -> None:
    assert State.QUEUED not in _reachable(State.HANDING_BACK)


def test_runs_are_the_states_a_dispatch_leads_to() -> None:
    after = [s for s in _reachable(State.RUNNING) if s not in (State.QUEUED, *TERMINAL)]
    assert after == sorted(RUNS)


def test_a_job_moves_through_the_table_and_keeps_its_state_on_a_refusal() -> None:
    job = _job()
    path = [State.QUEUED, State.RUNNING, State.HANDING_BACK, State.CANCELLING, State.ENDED]
    seen = [job.state]
    for to in path:
        job.move(to)
        seen.append(job.state)
    assert seen == [State.NEW, *path]
    with pytest.raises(LifecycleError, match="job 'j' cannot go from ended to running"):
        job.move(State.RUNNING)
    assert job.state is State.ENDED


def test_a_cancelled_run_whose_partition_is_released_leaves_unended_for_the_next_owner() -> None:
    """CANCELLING to LEFT, a step no other test takes: the partition goes before the cancelled
    run stops, so neither command is committed and the next owner reads both again (and
    answers the cancel)."""
    book = new_book()
    effects = book.command(record(submit("a"), 0), now=0)
    effects += book.command(record(cancel("a"), 1), now=1)
    assert Stop("a", StopReason.CANCEL) in effects
    assert book.revoke([TP(TOPIC, 0)], now=2) == []  # asked to stop already
    assert book.release([TP(TOPIC, 0)]) == [Kill("a", 1)]
    assert book.jobs == {}
    assert [e for e in published(effects) if is_terminal(e)] == []
    assert commits(effects) == {}
