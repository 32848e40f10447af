"""Messages between the service process and its pool workers (light: no torch here).

The service sends :class:`RunOrder` down a worker's pipe and reads :data:`WorkerMessage`
back. It asks a running job to stop by writing a ``STOP_*`` value into a shared integer that
the training loop reads at every step, so asking costs the loop nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol, TypeAlias

STOP_NONE, STOP_CANCEL, STOP_SHUTDOWN = 0, 1, 2


class StopFlag(Protocol):
    """A shared integer (``multiprocessing.Value("i")``) holding a ``STOP_*`` value."""

    value: int


@dataclass(frozen=True)
class RunOrder:
    """Run one attempt of a job."""

    job_json: bytes
    attempt: int
    first_seq: int
    queue: str
    data_root: Path
    artifacts_root: Path
    checkpoint_every: int
    max_corpus_bytes: int
    deadline: float | None  # wall-clock time after which the job ends with TRAINING_TIMEOUT


@dataclass(frozen=True)
class WorkerReady:
    pid: int


@dataclass(frozen=True)
class JobEvent:
    """A config or progress event of the running job, encoded."""

    job_id: str
    data: bytes


@dataclass(frozen=True)
class JobEnded:
    """The job's terminal event (completed or failed), encoded."""

    job_id: str
    data: bytes


@dataclass(frozen=True)
class JobPreempted:
    """The job checkpointed at ``step`` and stopped without a terminal event."""

    job_id: str
    step: int


WorkerMessage = WorkerReady | JobEvent | JobEnded | JobPreempted


# Strings: Connection is generic only to the type checker.
ParentEnd: TypeAlias = "Connection[RunOrder, WorkerMessage]"
WorkerEnd: TypeAlias = "Connection[WorkerMessage, RunOrder]"


def worker_entry(
    conn: WorkerEnd, stop_flag: StopFlag, threads: int, log_level: str, log_format: str
) -> None:
    """Process target; imports the worker (and torch) only inside the child."""
    from .worker import worker_main

    worker_main(conn, stop_flag, threads, log_level, log_format)
