"""Messages between the service process and its pool workers (light: no torch here).

The service sends :class:`RunOrder` down a worker's pipe and reads :data:`WorkerMessage`
back. It asks a running job to stop by writing a :class:`~.core.stop.StopReason` into a shared
integer that the engine reads at every step, so asking costs the loop nothing. Every message
about a job names the run (``attempt``) it belongs to, so the service can tell a late message
of an earlier run from one of the current run.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol, TypeAlias


class StopFlag(Protocol):
    """A shared integer (``multiprocessing.Value("i")``): 0, or a StopReason's value."""

    value: int


@dataclass(frozen=True)
class WorkerMemory:
    """A worker's memory budget in MiB: ``limit_mb`` bounds its heap above its idle size
    (None: no limit); ``check_mb`` refuses a job whose estimate, with the vocabulary it
    actually built, is over it (None: no check)."""

    limit_mb: int | None = None
    check_mb: int | None = None


@dataclass(frozen=True)
class RunOrder:
    """Run one attempt of a job; everything the worker needs is resolved here, once."""

    job_json: bytes
    attempt: int
    queue: str
    data_root: Path
    artifacts_root: Path
    checkpoint_every: int
    max_corpus_bytes: int
    deadline: float | None  # wall-clock time after which the run stops with TRAINING_TIMEOUT
    artifacts_url: str | None = None  # object storage for checkpoints and the artifact
    storage_retry_s: float = 120.0
    processes: int = 1  # worker slots the run holds: its own and, idle, one per other rank


@dataclass(frozen=True)
class WorkerReady:
    pid: int
    cuda: bool  # whether this worker sees a CUDA device


@dataclass(frozen=True)
class JobEvent:
    """A config or progress event of the running job, encoded (seq 0: the service numbers it)."""

    job_id: str
    attempt: int
    data: bytes


@dataclass(frozen=True)
class JobEnded:
    """The job's terminal event (completed or failed), encoded (seq 0)."""

    job_id: str
    attempt: int
    data: bytes


@dataclass(frozen=True)
class JobPreempted:
    """The job stopped on request without a terminal event; its checkpoint is at ``step``."""

    job_id: str
    attempt: int
    step: int


@dataclass(frozen=True)
class JobLog:
    """A log line of the running job, an encoded ``LogLineV1``: published best-effort on the
    logs topic, never seen by the job book."""

    job_id: str
    attempt: int
    data: bytes


@dataclass(frozen=True)
class RunStarted:
    """Reported by the pool: a worker took the run (it may have waited for a free one)."""

    job_id: str
    attempt: int


@dataclass(frozen=True)
class WorkerDied:
    """Reported by the pool: the process running this run ended without its end message
    (killed, crashed, out of memory); or by a worker: a rank of the run's processes did."""

    job_id: str
    attempt: int
    exitcode: int | None


WorkerMessage = WorkerReady | JobEvent | JobEnded | JobPreempted | JobLog | WorkerDied
RunReport = RunStarted | JobEvent | JobEnded | JobPreempted | WorkerDied  # pool → book


# Strings: Connection is generic only to the type checker.
ParentEnd: TypeAlias = "Connection[RunOrder, WorkerMessage]"
WorkerEnd: TypeAlias = "Connection[WorkerMessage, RunOrder]"
