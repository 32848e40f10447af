"""A job of several processes: the worker that takes it spawns its ranks and waits for them.

The launcher was chosen by experiment (README, "Distributed jobs"): the ranks are new
processes, forked from a server that imported the engine once per worker (multiprocessing's
forkserver), meeting at a rendezvous in a file store of their own; the other
worker slots the job holds stay reserved and idle. So the job has one owner (this worker)
whose death takes every rank with it (each rank runs the worker's lifeline), one stop flag
every rank reads, and one outcome.

Outcomes: rank 0's message (its completed or failed event, or its preemption), unless rank 0
failed only because another rank did (an INTERNAL_ERROR, such as gloo's lost connection),
in which case another rank's typed failure; a rank that died (a signal, an exit without
its message) makes the whole run a :class:`WorkerDied`, which the job book retries from the
last checkpoint like any dead worker.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

import structlog
from model_trainer_contracts import FailedEventV1, ModelTrainerErrorCode, SubmitJobV1, decode_event

from model_trainer.core.distributed import Rank
from model_trainer.logs import configure_logging
from model_trainer.pool.lifeline import watch_parent
from model_trainer.pool.protocol import (
    JobEnded,
    RunOrder,
    StopFlag,
    WorkerDied,
    WorkerEnd,
    WorkerMemory,
    WorkerMessage,
)

log = structlog.get_logger("model_trainer.pool.ranks")
# Ranks fork from a server that imported the engine once (the first job of several processes
# on a worker starts it): a spawned rank imports torch and transformers again, every job.
_context = multiprocessing.get_context("forkserver")
PRELOAD = [
    "model_trainer.pool.worker",
    "model_trainer.engine.distributed",
    "model_trainer.engine.backends.gpt2",
    "model_trainer.engine.backends.llama",
]
GRACE_S = 3.0  # after one rank fails, the others get this long to end before SIGKILL


# A rank's run of the order (the worker's run_rank): a module-level function, so that it
# pickles by name into the rank's process.
RunRank = Callable[[RunOrder, WorkerEnd, StopFlag, int, WorkerMemory, Rank], WorkerMessage]


def launch(
    order: RunOrder,
    conn: WorkerEnd,
    flag: StopFlag,
    threads: int,
    memory: WorkerMemory,
    strategy: str,
    run: RunRank,
    log_args: tuple[str, str] = ("info", "json"),
) -> WorkerMessage:
    """Run ``order`` on ``resources.processes`` ranks, each through ``run`` (the worker's
    :func:`~model_trainer.pool.worker.run_rank`, handed in so that this module needs nothing
    of the worker's); one message for the whole run."""
    job = SubmitJobV1.model_validate_json(order.job_json)
    world = job.resources.processes
    _context.set_forkserver_preload(PRELOAD)
    # Pool workers are daemonic, and multiprocessing refuses children to a daemonic process
    # (they could be orphaned): here every rank runs the worker's lifeline and _wait ends
    # them all, so the worker may have them.
    multiprocessing.current_process().daemon = False
    # A file store, not a TCP port: a free port picked here could be taken before rank 0
    # binds it on a busy host.
    rendezvous = tempfile.mkdtemp(prefix=f"rendezvous-{job.job_id}-")
    init_method = f"file://{rendezvous}/store"
    results: multiprocessing.SimpleQueue[tuple[int, WorkerMessage]] = _context.SimpleQueue()
    bound = log.bind(job_id=job.job_id, attempt=order.attempt, processes=world)
    bound.info("ranks starting", strategy=strategy, init_method=init_method)
    args = (
        world,
        strategy,
        init_method,
        order,
        conn,
        flag,
        threads,
        memory,
        run,
        log_args,
        results,
    )
    ranks = [
        _context.Process(target=rank_main, args=(index, *args), name=f"{job.job_id}-rank-{index}")
        for index in range(world)
    ]
    for rank in ranks:
        rank.start()
    try:
        failed = _wait(ranks)
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)
    if failed is not None:
        bound.warning("a rank died; every rank ended", rank=failed, exitcode=ranks[failed].exitcode)
        return WorkerDied(job.job_id, order.attempt, ranks[failed].exitcode)
    return choose(dict(results.get() for _ in range(world)))


def _wait(ranks: Sequence[BaseProcess]) -> int | None:
    """Wait for every rank; the first that ends badly ends the others (SIGTERM, then SIGKILL
    after GRACE_S) and is returned."""
    running = list(ranks)
    while running:
        wait([r.sentinel for r in running])
        for rank in [r for r in running if not r.is_alive()]:
            running.remove(rank)
            rank.join()
            if rank.exitcode != 0:
                for other in running:
                    other.terminate()
                for other in running:
                    other.join(GRACE_S)
                    if other.is_alive():
                        other.kill()
                        other.join()
                return ranks.index(rank)
    return None


def choose(outcomes: dict[int, WorkerMessage]) -> WorkerMessage:
    """The run's one outcome from its ranks' (see the module docstring)."""
    first = outcomes[0]
    if not _internal(first):
        return first
    for index in sorted(outcomes):
        if not _internal(outcomes[index]):
            return outcomes[index]
    return first


def _internal(message: WorkerMessage) -> bool:
    if not isinstance(message, JobEnded):
        return False
    event = decode_event(message.data)
    return isinstance(event, FailedEventV1) and event.code is ModelTrainerErrorCode.INTERNAL_ERROR


def rank_main(
    index: int,
    world: int,
    strategy: str,
    init_method: str,
    order: RunOrder,
    conn: WorkerEnd,
    flag: StopFlag,
    threads: int,
    memory: WorkerMemory,
    run: RunRank,
    log_args: tuple[str, str],
    results: multiprocessing.SimpleQueue[tuple[int, WorkerMessage]],
) -> None:
    """One rank: joins the job's process group and runs the order (rank 0 emits)."""
    watch_parent()  # a rank dies with its worker (a kill of the run, or of the service)
    configure_logging(*log_args)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stop flag stops a run, not Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the launcher's way to end a rank
    from model_trainer.engine import distributed

    rank = Rank(index, world, strategy, init_method)
    structlog.contextvars.bind_contextvars(rank=index)
    distributed.join(rank)
    job_id = SubmitJobV1.model_validate_json(order.job_json).job_id
    # Which process is which rank, for an operator's kill or a look at one rank's stack.
    log.info("rank joined", job_id=job_id, attempt=order.attempt, rank=index, pid=os.getpid())
    try:
        message = run(order, conn, flag, threads, memory, rank)
    finally:
        distributed.leave()
    results.put((index, message))
