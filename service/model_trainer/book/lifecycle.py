"""A job's lifecycle in the book: one state, and the table of the steps between states.

The invariant: a job's state changes only through :func:`step`, which allows exactly the
steps in :data:`TRANSITIONS`. A step the table does not hold is a bug in the book, raised as
:class:`LifecycleError` (never answered to a user as a refusal). ``ENDED`` and ``LEFT`` are
the only states with no way out: a job that reached either is out of the book for good (a
job submitted again under its id is a new job, from ``NEW``).

What the states promise of the book's other facts (the book keeps them, the table does not):

* ``QUEUED``: the job is in the queue, and only then. A run that met a full disk waits there
  until ``Job.not_before``: a time, not a state (it leaves the queue the same ways).
* ``RUNNING``, ``CANCELLING``, ``HANDING_BACK`` (:data:`RUNS`): a worker slot holds the job's
  current run (or will, once the slot's earlier run is dead), and every message of that run
  counts. A cancel arrived exactly when the job is ``CANCELLING``: it ends cancelled, whatever
  its run does next. ``HANDING_BACK`` is reached by a revoke or a shutdown only, so its run's
  end never queues the job again here.

Pure: no I/O and no clock, so the table is checked at every step of the book's property
machines.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class State(StrEnum):
    NEW = "new"  # accepted by its command, being admitted: queued next, or refused
    QUEUED = "queued"  # waits in the queue for a worker slot
    RUNNING = "running"  # a worker has the run (or will, once one is free)
    CANCELLING = "cancelling"  # a cancel came during its run: asked to stop, ends cancelled
    HANDING_BACK = "handing_back"  # asked to checkpoint and stop: revoke or shutdown
    ENDED = "ended"  # its terminal event went out
    LEFT = "left"  # handed to its partition's next owner unended (its command uncommitted)


S = State
TRANSITIONS: Mapping[State, frozenset[State]] = {
    S.NEW: frozenset({S.QUEUED, S.ENDED}),
    S.QUEUED: frozenset({S.RUNNING, S.ENDED, S.LEFT}),
    S.RUNNING: frozenset({S.QUEUED, S.CANCELLING, S.HANDING_BACK, S.ENDED, S.LEFT}),
    S.CANCELLING: frozenset({S.ENDED, S.LEFT}),
    S.HANDING_BACK: frozenset({S.CANCELLING, S.ENDED, S.LEFT}),
    S.ENDED: frozenset(),
    S.LEFT: frozenset(),
}
RUNS = frozenset({S.RUNNING, S.CANCELLING, S.HANDING_BACK})  # a worker slot holds its run


class LifecycleError(RuntimeError):
    """A step :data:`TRANSITIONS` does not allow: a bug in the book, never a user's error."""


def step(job_id: str, current: State, to: State) -> State:
    """``to``, if the table allows ``current`` to go there; else :class:`LifecycleError`."""
    if to not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing: it is terminal"
        raise LifecycleError(
            f"job {job_id!r} cannot go from {current} to {to} (allowed: {allowed}); "
            "this is a bug in the job book"
        )
    return to
