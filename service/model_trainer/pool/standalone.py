"""The ranks of one job launched outside a pool, as a worker launches them: for the tests and
``bench/distributed.py``, which need rank 0's messages and the outcome without a service."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable

from model_trainer.core.stop import NO_STOP
from model_trainer.pool.protocol import RunOrder, StopFlag, WorkerMemory, WorkerMessage
from model_trainer.pool.ranks import launch
from model_trainer.pool.worker import run_rank


def stop_flag() -> StopFlag:
    """A stop flag shared with the ranks, as the pool gives each worker."""
    flag: StopFlag = multiprocessing.get_context("spawn").Value("i", NO_STOP)
    return flag


def launch_here(
    order: RunOrder,
    strategy: str,
    on_message: Callable[[object], None],
    flag: StopFlag | None = None,
    threads: int = 1,
) -> WorkerMessage:
    """Run ``order``'s ranks through the worker's launcher; each message rank 0 sends (its
    events) goes to ``on_message`` on a reader thread; returns the run's outcome."""
    parent, child = multiprocessing.Pipe()

    def read() -> None:
        while True:
            try:
                message = parent.recv()
            except (EOFError, OSError):
                return
            on_message(message)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    outcome = launch(
        order,
        child,
        stop_flag() if flag is None else flag,
        threads,
        WorkerMemory(),
        strategy,
        run_rank,
        ("warning", "console"),
    )
    child.close()
    reader.join(10)
    return outcome
