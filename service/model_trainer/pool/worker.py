"""A pool worker: a process that imports torch once, then runs one job at a time.

Each job's events go up the pipe as they happen; its outcome is one :class:`JobEnded`
(completed or failed event) or a :class:`JobPreempted` after a checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import traceback
from collections.abc import Callable

import structlog
import torch
from model_trainer_contracts import (
    ConfigEventV1,
    DownloadEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
    encode,
)
from pydantic import JsonValue

from model_trainer.core.distributed import Rank, strategy_of
from model_trainer.core.envelope import failed_event
from model_trainer.core.limits import MIB, data_size, limit_data, prefer_oom_kill, release_memory
from model_trainer.core.stop import StopReason, reason_of, stop_at_deadline
from model_trainer.engine import run_job  # validates the job before any work
from model_trainer.engine.context import Preempted, RunContext, Superseded
from model_trainer.engine.registry import preload as preload_backends
from model_trainer.engine.stages import disk_full, is_disk_full, is_oom
from model_trainer.logs import configure_logging
from model_trainer.pool.joblog import LogForwarder
from model_trainer.pool.lifeline import orphaned
from model_trainer.pool.protocol import (
    JobEnded,
    JobEvent,
    JobLog,
    JobPreempted,
    RunOrder,
    StopFlag,
    WorkerEnd,
    WorkerMemory,
    WorkerMessage,
    WorkerReady,
)
from model_trainer.pool.ranks import launch

log = structlog.get_logger("model_trainer.pool.worker")
IDLE_AFTER_S = 0.5  # no order within this: the worker is idle


class _Stopper:
    """``RunContext.stop_requested`` for one attempt: the service's death, the shared flag,
    then the deadline."""

    def __init__(self, flag: StopFlag, deadline: float | None) -> None:
        self._flag = flag
        self._deadline = stop_at_deadline(deadline)
        self._parent = os.getppid()

    def __call__(self) -> StopReason | None:
        if orphaned() or os.getppid() != self._parent:
            # The service died (kill -9): checkpoint and stop in the lifeline's grace (it
            # ends this process soon after), so whoever takes the job over resumes from here.
            return StopReason.SHUTDOWN
        return reason_of(self._flag.value) or self._deadline()


class Pipe:
    """The worker's end of its pipe, one sender at a time: log lines may come from any
    thread, and two messages must never interleave on the pipe."""

    def __init__(self, conn: WorkerEnd) -> None:
        self.conn = conn
        self._lock = threading.RLock()  # a record logged while sending must not deadlock

    def send(self, message: WorkerMessage) -> None:
        with self._lock:
            self.conn.send(message)

    def send_log(self, line: JobLog) -> None:
        # The service gone (its lifeline ends this process): the line is on stderr only.
        with contextlib.suppress(OSError):
            self.send(line)


class _Emitter:
    def __init__(self, conn: Pipe, job_id: str, attempt: int) -> None:
        self._conn = conn
        self._job_id = job_id
        self._attempt = attempt

    def __call__(self, event: ConfigEventV1 | ProgressEventV1 | DownloadEventV1) -> None:
        try:
            self._conn.send(JobEvent(self._job_id, self._attempt, encode(event)))
        except BrokenPipeError:
            # The service is gone: its lifeline stops this run (after a checkpoint) and
            # this process; the event has no one to go to.
            log.warning("event not sent: the service is gone", job_id=self._job_id)


def _mute(_event: ConfigEventV1 | ProgressEventV1 | DownloadEventV1) -> None:
    return None  # ranks other than 0 report nothing: rank 0 speaks for the job


def run_order(
    order: RunOrder,
    conn: Pipe,
    flag: StopFlag,
    threads: int,
    memory: WorkerMemory | None = None,
    rank: Rank | None = None,
) -> WorkerMessage:
    """Run one attempt (or, given ``rank``, one rank of it); every outcome, expected or not,
    becomes a message. A job of several processes is handed to its ranks (:mod:`.ranks`)."""
    memory = memory or WorkerMemory()
    job = SubmitJobV1.model_validate_json(order.job_json)
    emitter = _Emitter(conn, job.job_id, order.attempt)
    ctx = RunContext(
        job=job,
        data_root=order.data_root,
        artifacts_root=order.artifacts_root,
        attempt=order.attempt,
        queue=order.queue,
        threads=threads,
        checkpoint_every=order.checkpoint_every,
        max_corpus_bytes=order.max_corpus_bytes,
        emit=emitter if rank is None or rank.leader else _mute,
        emit_download=emitter if rank is None or rank.leader else _mute,
        stop_requested=_Stopper(flag, order.deadline),
        memory_budget_mb=memory.check_mb,
        artifacts_url=order.artifacts_url,
        storage_retry_s=order.storage_retry_s,
        rank=rank,
    )
    # Every record of the run (the engine's, a library's warning) is bound to the job, so the
    # forwarder sends it to the job's logs.
    ranks: Callable[[], WorkerMessage] | None = None
    if rank is None and job.resources.processes > 1:
        strategy = strategy_of(job, memory.check_mb)
        ranks = functools.partial(
            launch, order, conn.conn, flag, threads, memory, strategy, run_rank
        )
    with structlog.contextvars.bound_contextvars(job_id=job.job_id, attempt=order.attempt):
        return _run(ctx, order, memory, ranks)


def run_rank(
    order: RunOrder, conn: WorkerEnd, flag: StopFlag, threads: int, memory: WorkerMemory, rank: Rank
) -> WorkerMessage:
    """One rank's run of a job of several processes (in the rank's own process)."""
    return run_order(order, Pipe(conn), flag, threads, memory, rank=rank)


def _run(
    ctx: RunContext,
    order: RunOrder,
    memory: WorkerMemory,
    ranks: Callable[[], WorkerMessage] | None,
) -> WorkerMessage:
    job = ctx.job
    bound = log.bind(job_id=job.job_id, attempt=order.attempt)
    bound.info("job started")
    try:
        if ranks is not None:  # a job of several processes: its ranks run it
            return ranks()
        completed = run_job(ctx)
    except ModelTrainerError as exc:
        if exc.code is ModelTrainerErrorCode.TRAINING_OOM and memory.limit_mb is not None:
            exc.details.setdefault("budget_mb", memory.limit_mb)
        # With its traceback (a cancel's aside): the job's own logs show where it failed.
        where = exc.code is not ModelTrainerErrorCode.TRAINING_CANCELLED
        bound.info(
            "job failed", code=str(exc.code), error=exc.message, stage=exc.stage, exc_info=where
        )
        return JobEnded(job.job_id, order.attempt, encode(failed_event(ctx.envelope(), exc)))
    except Superseded as exc:
        bound.warning("job superseded: a later attempt owns it", by=exc.by, step=exc.step)
        return JobPreempted(job.job_id, order.attempt, exc.step)
    except Preempted as exc:
        bound.info("job preempted", step=exc.step)
        return JobPreempted(job.job_id, order.attempt, exc.step)
    except Exception as exc:
        if is_disk_full(exc):  # a full disk outside the engine's stages: the same typed failure
            error = disk_full("train", exc)
            bound.warning("job hit a full disk", error=error.message)
            return JobEnded(job.job_id, order.attempt, encode(failed_event(ctx.envelope(), error)))
        if is_oom(exc):  # out of memory outside the engine's stages: the same typed failure
            bound.error("job ran out of memory", error=str(exc)[:300])
            details: dict[str, JsonValue] = {}
            if memory.limit_mb is not None:
                details["budget_mb"] = memory.limit_mb
            error = ModelTrainerError(
                ModelTrainerErrorCode.TRAINING_OOM,
                "host memory ran out",
                stage="train",
                details=details,
            )
            return JobEnded(job.job_id, order.attempt, encode(failed_event(ctx.envelope(), error)))
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


def guard_memory(memory: WorkerMemory, cuda: bool) -> None:
    """The kernel-side protections (:mod:`.limits`): this worker first in line for the OOM
    killer, and, on a CPU worker, its heap limited to its idle size plus its budget."""
    # Start the thread pools first: their stacks belong to the idle size, and a thread that
    # cannot start under the limit aborts the process instead of failing one job.
    torch.ones(1 << 20).add_(1).sum()
    torch.ones(64, 64) @ torch.ones(64, 64)
    first_in_line = prefer_oom_kill()
    limit = None
    if memory.limit_mb is not None and not cuda:
        # Not on CUDA workers: the driver's host-side mappings were not measured here.
        limit = limit_data(memory.limit_mb)
    log.info(
        "worker memory",
        idle_mb=data_size() // MIB,
        budget_mb=memory.limit_mb,
        limit_mb=None if limit is None else limit // MIB,
        oom_score_adj_raised=first_in_line,
    )


def worker_main(
    conn: WorkerEnd,
    stop_flag: StopFlag,
    threads: int,
    log_level: str,
    log_format: str,
    memory: WorkerMemory | None = None,
    preload: tuple[str, ...] = (),
) -> None:
    """Serve run orders until the pipe closes (once the ``preload`` backends are imported)."""
    memory = memory or WorkerMemory()
    pipe = Pipe(conn)
    configure_logging(log_level, log_format, forward=LogForwarder(pipe.send_log))
    # The service coordinates shutdown through the stop flag; a terminal's Ctrl-C or a
    # process-group SIGTERM must not kill a job mid-step without its checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    structlog.contextvars.bind_contextvars(worker_pid=os.getpid())
    cuda = torch.cuda.is_available()
    # Every job builds an optimizer, whose first construction imports torch._dynamo (seconds
    # of CPU): done here, so no run sits silent that long (its stall clock is running).
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    preload_backends(preload)  # before the memory limit, as the worker's own imports
    guard_memory(memory, cuda)
    pipe.send(WorkerReady(os.getpid(), cuda))
    while True:
        try:
            order = conn.recv()
        except (EOFError, OSError):
            return
        pipe.send(run_order(order, pipe, stop_flag, threads, memory))
        release_memory(full=False)
        if not conn.poll(IDLE_AFTER_S):  # idle: back to the idle size before the next job
            release_memory(full=True)
