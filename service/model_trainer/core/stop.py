"""Why a running job is asked to stop: one enum, shared by the service, its workers and the
engine (it crosses the pipe as a shared integer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class StopReason(IntEnum):
    CANCEL = 1  # checkpoint, end with TRAINING_CANCELLED (the checkpoint goes once it commits)
    TIMEOUT = 2  # checkpoint, end with TRAINING_TIMEOUT (likewise)
    SHUTDOWN = 3  # checkpoint and stop without a terminal event: another attempt resumes it


NO_STOP = 0  # the shared integer's value while nobody asks the job to stop


def reason_of(value: int) -> StopReason | None:
    """The reason a shared integer holds, or None."""
    try:
        return StopReason(value)
    except ValueError:
        return None


def stop_at_deadline(
    deadline: float | None, clock: Callable[[], float] = time.time
) -> Callable[[], StopReason | None]:
    """A ``stop_requested`` that answers TIMEOUT once the wall clock passes ``deadline``."""

    def requested() -> StopReason | None:
        if deadline is not None and clock() > deadline:
            return StopReason.TIMEOUT
        return None

    return requested
