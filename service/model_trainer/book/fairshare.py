"""The order queued jobs run in: users take turns; within a user, higher priority first.

Pure: the book asks for the order whenever a worker is free. A user who was served least
recently goes first (one who never was, before anyone who was), so one user submitting 500
jobs cannot starve another; a job put back at the front of the queue (a retry, a resumed
job) keeps its place within its user's turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Waiting:
    """A queued job as the order sees it."""

    job_id: str
    user_id: int
    priority: int


def run_order(queue: Iterable[Waiting], last_served: Mapping[int, int]) -> list[Waiting]:
    """``queue`` (in queue order) in the order it would run.

    ``last_served`` maps a user to the dispatch count at which one of their jobs last started;
    users are taken round-robin from the least recently served."""
    per_user: dict[int, list[Waiting]] = {}
    for waiting in queue:
        per_user.setdefault(waiting.user_id, []).append(waiting)
    for jobs in per_user.values():
        jobs.sort(key=lambda w: -w.priority)  # stable: queue order within a priority
    arrival = {user: index for index, user in enumerate(per_user)}
    users = sorted(per_user, key=lambda u: (last_served.get(u, -1), arrival[u]))
    ordered: list[Waiting] = []
    depth = 0
    while len(ordered) < sum(len(jobs) for jobs in per_user.values()):
        ordered += [per_user[u][depth] for u in users if depth < len(per_user[u])]
        depth += 1
    return ordered
