"""A pool worker: a process that imports torch once, then runs one job at a time.

Each job's events go up the pipe as they happen; its outcome is one :class:`JobEnded`
(completed or failed event) or a :class:`JobPreempted` after a checkpoint.
"""

from __future__ import annotations

import os
import signal
import time
import traceback

import structlog
import torch
from model_trainer_contracts import (
    ConfigEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
    encode,
)

from .engine import run_job  # validates the job before any work
from .engine.context import Preempted, RunContext, StopReason
from .envelope import failed_event
from .logs import configure_logging
from .protocol import (
    STOP_CANCEL,
    STOP_SHUTDOWN,
    JobEnded,
    JobEvent,
    JobPreempted,
    RunOrder,
    StopFlag,
    WorkerEnd,
    WorkerMessage,
    WorkerReady,
)

log = structlog.get_logger("model_trainer.worker")


class _Stopper:
    """``RunContext.stop_requested`` for one attempt: the shared flag, then the deadline."""

    def __init__(self, flag: StopFlag, deadline: float | None) -> None:
        self._flag = flag
        self._deadline = deadline
        self._parent = os.getppid()

    def __call__(self) -> StopReason | None:
        value = self._flag.value
        if os.getppid() != self._parent:
            # The service died (kill -9): checkpoint and stop, so whoever takes the job over
            # resumes it instead of racing an orphan.
            return StopReason.SHUTDOWN
        if value == STOP_CANCEL:
            return StopReason.CANCEL
        if value == STOP_SHUTDOWN:
            return StopReason.SHUTDOWN
        if self._deadline is not None and time.time() > self._deadline:
            return StopReason.TIMEOUT
        return None


class _Emitter:
    def __init__(self, conn: WorkerEnd, job_id: str) -> None:
        self._conn = conn
        self._job_id = job_id

    def __call__(self, event: ConfigEventV1 | ProgressEventV1) -> None:
        self._conn.send(JobEvent(self._job_id, encode(event)))


def run_order(order: RunOrder, conn: WorkerEnd, flag: StopFlag, threads: int) -> WorkerMessage:
    """Run one attempt; every outcome, expected or not, becomes a message."""
    job = SubmitJobV1.model_validate_json(order.job_json)
    ctx = RunContext(
        job=job,
        data_root=order.data_root,
        artifacts_root=order.artifacts_root,
        attempt=order.attempt,
        first_seq=order.first_seq,
        queue=order.queue,
        threads=threads,
        checkpoint_every=order.checkpoint_every,
        max_corpus_bytes=order.max_corpus_bytes,
        emit=_Emitter(conn, job.job_id),
        stop_requested=_Stopper(flag, order.deadline),
    )
    bound = log.bind(job_id=job.job_id, attempt=order.attempt)
    bound.info("job started", first_seq=order.first_seq)
    try:
        completed = run_job(ctx)
    except ModelTrainerError as exc:
        bound.info("job failed", code=str(exc.code), error=exc.message, stage=exc.stage)
        return JobEnded(job.job_id, encode(failed_event(ctx.envelope(), exc)))
    except Preempted as exc:
        bound.info("job preempted", step=exc.step)
        return JobPreempted(job.job_id, exc.step)
    except MemoryError:
        bound.error("job ran out of memory")
        error = ModelTrainerError(
            ModelTrainerErrorCode.TRAINING_OOM, "host memory ran out", stage="train"
        )
        return JobEnded(job.job_id, encode(failed_event(ctx.envelope(), error)))
    except Exception as exc:
        bound.exception("job crashed")
        error = ModelTrainerError(
            ModelTrainerErrorCode.INTERNAL_ERROR,
            f"{type(exc).__name__}: {exc}",
            stage="train",
            details={"traceback": traceback.format_exc(limit=8)[-4000:]},
        )
        return JobEnded(job.job_id, encode(failed_event(ctx.envelope(), error)))
    bound.info("job completed", steps=completed.steps)
    return JobEnded(job.job_id, encode(completed))


def worker_main(
    conn: WorkerEnd, stop_flag: StopFlag, threads: int, log_level: str, log_format: str
) -> None:
    """Serve run orders until the pipe closes."""
    configure_logging(log_level, log_format)
    # The service coordinates shutdown through the stop flag; a terminal's Ctrl-C or a
    # process-group SIGTERM must not kill a job mid-step without its checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    structlog.contextvars.bind_contextvars(worker_pid=os.getpid())
    conn.send(WorkerReady(os.getpid()))
    while True:
        try:
            order = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(run_order(order, conn, stop_flag, threads))
