"""A pool worker: a process that imports torch once, then runs one job at a time.

Each job's events go up the pipe as they happen; its outcome is one :class:`JobEnded`
(completed or failed event) or a :class:`JobPreempted` after a checkpoint.
"""

from __future__ import annotations

import os
import signal
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

from .core.envelope import failed_event
from .core.stop import StopReason, reason_of, stop_at_deadline
from .engine import run_job  # validates the job before any work
from .engine.context import Preempted, RunContext
from .logs import configure_logging
from .protocol import (
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
    """``RunContext.stop_requested`` for one attempt: the service's death, the shared flag,
    then the deadline."""

    def __init__(self, flag: StopFlag, deadline: float | None) -> None:
        self._flag = flag
        self._deadline = stop_at_deadline(deadline)
        self._parent = os.getppid()

    def __call__(self) -> StopReason | None:
        if os.getppid() != self._parent:
            # The service died (kill -9): checkpoint and stop, so whoever takes the job over
            # resumes it instead of racing an orphan.
            return StopReason.SHUTDOWN
        return reason_of(self._flag.value) or self._deadline()


class _Emitter:
    def __init__(self, conn: WorkerEnd, job_id: str, attempt: int) -> None:
        self._conn = conn
        self._job_id = job_id
        self._attempt = attempt

    def __call__(self, event: ConfigEventV1 | ProgressEventV1) -> None:
        self._conn.send(JobEvent(self._job_id, self._attempt, encode(event)))


def run_order(order: RunOrder, conn: WorkerEnd, flag: StopFlag, threads: int) -> WorkerMessage:
    """Run one attempt; every outcome, expected or not, becomes a message."""
    job = SubmitJobV1.model_validate_json(order.job_json)
    ctx = RunContext(
        job=job,
        data_root=order.data_root,
        artifacts_root=order.artifacts_root,
        attempt=order.attempt,
        queue=order.queue,
        threads=threads,
        checkpoint_every=order.checkpoint_every,
        max_corpus_bytes=order.max_corpus_bytes,
        emit=_Emitter(conn, job.job_id, order.attempt),
        stop_requested=_Stopper(flag, order.deadline),
    )
    bound = log.bind(job_id=job.job_id, attempt=order.attempt)
    bound.info("job started")
    try:
        completed = run_job(ctx)
    except ModelTrainerError as exc:
        bound.info("job failed", code=str(exc.code), error=exc.message, stage=exc.stage)
        return JobEnded(job.job_id, order.attempt, encode(failed_event(ctx.envelope(), exc)))
    except Preempted as exc:
        bound.info("job preempted", step=exc.step)
        return JobPreempted(job.job_id, order.attempt, exc.step)
    except MemoryError:
        bound.error("job ran out of memory")
        error = ModelTrainerError(
            ModelTrainerErrorCode.TRAINING_OOM, "host memory ran out", stage="train"
        )
        return JobEnded(job.job_id, order.attempt, encode(failed_event(ctx.envelope(), error)))
    except Exception as exc:
        bound.exception("job crashed")
        error = ModelTrainerError(
            ModelTrainerErrorCode.INTERNAL_ERROR,
            f"{type(exc).__name__}: {exc}",
            stage="train",
            details={"traceback": traceback.format_exc(limit=8)[-4000:]},
        )
        return JobEnded(job.job_id, order.attempt, encode(failed_event(ctx.envelope(), error)))
    bound.info("job completed", steps=completed.steps)
    return JobEnded(job.job_id, order.attempt, encode(completed))


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
    conn.send(WorkerReady(os.getpid(), torch.cuda.is_available()))
    while True:
        try:
            order = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(run_order(order, conn, stop_flag, threads))
