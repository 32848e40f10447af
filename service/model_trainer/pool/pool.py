"""The executor pool: N worker processes, one job each at a time, replaced when they die.

Workers are spawned (not forked) before any job arrives and import torch once; the service
process never does. A reader thread per worker turns its pipe into messages on an asyncio
queue, so a training loop's ``send`` never waits on the event loop.

The pool decides nothing about jobs (the job book does); it keeps three promises the book
relies on. Each run it is handed ends in exactly one message: :class:`JobEnded`,
:class:`JobPreempted` or :class:`WorkerDied`. An order waits in the pool until a live, ready
worker that nobody is killing can take it, so an order never reaches a dying process. A
failure of the pool's own supervision propagates (the service stops), never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess

import structlog

from model_trainer.core.stop import NO_STOP, StopReason
from model_trainer.metrics import WORKER_RESTARTS
from model_trainer.pool.protocol import (
    JobEvent,
    JobLog,
    JobPreempted,
    ParentEnd,
    RunOrder,
    RunReport,
    RunStarted,
    StopFlag,
    WorkerDied,
    WorkerEnd,
    WorkerMemory,
    WorkerMessage,
    WorkerReady,
)
from model_trainer.pool.secret_env import without_secrets
from model_trainer.settings import Settings

log = structlog.get_logger(__name__)
_spawn = multiprocessing.get_context("spawn")


def worker_entry(
    conn: WorkerEnd,
    stop_flag: StopFlag,
    threads: int,
    log_level: str,
    log_format: str,
    memory: WorkerMemory,
    preload: tuple[str, ...] = (),
    service_pid: int | None = None,
) -> None:
    """Process target; imports the worker (and torch) only inside the child."""
    from model_trainer.core.limits import return_freed_memory
    from model_trainer.pool.lifeline import watch_parent

    watch_parent(service_pid)  # first: a service killed while this imports torch takes it along

    return_freed_memory()  # before torch allocates anything
    from model_trainer.pool.worker import worker_main

    worker_main(conn, stop_flag, threads, log_level, log_format, memory, preload)


READY_TIMEOUT_S = 180.0


def _ignore(_line: JobLog) -> None:
    pass


@dataclass(frozen=True)
class _Exited:
    index: int
    process: SpawnProcess


@dataclass
class _Worker:
    index: int
    process: SpawnProcess
    conn: ParentEnd
    flag: StopFlag
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    run: tuple[str, int] | None = None  # (job_id, attempt)
    doomed: bool = False  # a kill was sent: it takes no more orders
    held_for: str | None = None  # a slot of this job's other ranks (spawned by its worker)

    @property
    def free(self) -> bool:
        return self.ready.is_set() and self.run is None and not self.doomed and not self.held_for


class WorkerPool:
    """Runs :class:`RunOrder`s on worker processes; outcomes arrive on :attr:`messages`."""

    def __init__(
        self,
        size: int,
        threads: int,
        log_level: str,
        log_format: str,
        memory: WorkerMemory | None = None,
        preload: tuple[str, ...] = (),
    ) -> None:
        self._size = size
        self._preload = preload
        self._threads = threads
        self._memory = memory or WorkerMemory()
        self._log_args = (log_level, log_format)
        self._workers: list[_Worker] = []
        self._pending: deque[tuple[str, RunOrder]] = deque()
        self._raw: asyncio.Queue[_Exited | tuple[int, WorkerMessage]] = asyncio.Queue()
        self.messages: asyncio.Queue[RunReport] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.cuda = False  # whether the workers see a CUDA device (from their ready message)
        # Where the workers' log lines go, called on the pipe's reader thread (thread-safe).
        self.on_log: Callable[[JobLog], None] = _ignore

    @classmethod
    def for_settings(cls, settings: Settings) -> WorkerPool:
        budget = settings.worker_memory_budget_mb
        memory = WorkerMemory(budget, budget if settings.memory_check else None)
        return cls(
            settings.workers,
            settings.torch_threads,
            settings.log_level,
            settings.log_format,
            memory,
            settings.preload_backends,
        )

    async def start(self) -> None:
        """Spawn every worker and return once all have imported torch."""
        self._loop = asyncio.get_running_loop()
        self._workers = [self._spawn(index) for index in range(self._size)]
        async with asyncio.timeout(READY_TIMEOUT_S):
            while not all(worker.ready.is_set() for worker in self._workers):
                await self._handle(await self._raw.get())
        log.info("worker pool ready", workers=self._size, threads_per_worker=self._threads)

    def _spawn(self, index: int) -> _Worker:
        parent, child = _spawn.Pipe()
        flag: StopFlag = _spawn.Value("i", NO_STOP)
        process = _spawn.Process(
            target=worker_entry,
            args=(
                child,
                flag,
                self._threads,
                *self._log_args,
                self._memory,
                self._preload,
                os.getpid(),
            ),
            name=f"model-trainer-worker-{index}",
            daemon=True,
        )
        with without_secrets():
            process.start()
        child.close()
        threading.Thread(
            target=self._read, args=(index, process, parent), daemon=True, name=f"pool-read-{index}"
        ).start()
        return _Worker(index, process, parent, flag)

    def _read(self, index: int, process: SpawnProcess, conn: ParentEnd) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                process.join(timeout=5)
                loop.call_soon_threadsafe(self._raw.put_nowait, _Exited(index, process))
                return
            if isinstance(message, JobLog):  # off the event loop: logs never delay it
                self.on_log(message)
                continue
            loop.call_soon_threadsafe(self._raw.put_nowait, (index, message))

    async def supervise(self) -> None:
        """Turn worker output into :attr:`messages` and replace dead workers; runs forever."""
        while True:
            await self._handle(await self._raw.get())

    async def _handle(self, item: _Exited | tuple[int, WorkerMessage]) -> None:
        if isinstance(item, _Exited):
            self._on_exit(item)
        else:
            index, message = item
            worker = self._workers[index]
            if isinstance(message, WorkerReady):
                self.cuda = message.cuda
                worker.ready.set()
            elif isinstance(message, JobEvent):
                self.messages.put_nowait(message)
            elif isinstance(message, JobLog):  # the reader thread passes them on itself
                self.on_log(message)
            else:
                self._release(worker)
                self.messages.put_nowait(message)
        self._hand_out()

    def _release(self, worker: _Worker) -> None:
        """The run on ``worker`` is over: it and the slots held for its other ranks are free."""
        if worker.run is not None:
            for other in self._workers:
                if other.held_for == worker.run[0]:
                    other.held_for = None
        worker.run = None

    def _on_exit(self, exited: _Exited) -> None:
        worker = self._workers[exited.index]
        if worker.process is not exited.process:
            return
        with contextlib.suppress(OSError):
            worker.conn.close()
        if self._closing:
            return
        exitcode = exited.process.exitcode
        log.warning("worker exited; replacing it", worker=exited.index, exitcode=exitcode)
        WORKER_RESTARTS.inc()
        self._workers[exited.index] = self._spawn(exited.index)
        self._workers[exited.index].held_for = worker.held_for
        if worker.run is not None:
            self.messages.put_nowait(WorkerDied(*worker.run, exitcode))
            self._release(worker)

    def _hand_out(self) -> None:
        """Give pending orders to free workers; an order of N processes takes N at once
        (its worker spawns the ranks, the others are held idle), or waits at the head."""
        for worker in self._workers:
            if not self._pending:
                return
            if not worker.free:
                continue
            job_id, order = self._pending[0]
            others = [w for w in self._workers if w.free and w is not worker]
            if len(others) < order.processes - 1:
                return
            self._pending.popleft()
            for other in others[: order.processes - 1]:
                other.held_for = job_id
            worker.flag.value = NO_STOP
            try:
                worker.conn.send(order)
            except OSError:  # the process is gone; its exit is on its way
                worker.doomed = True
                for other in others:
                    if other.held_for == job_id:
                        other.held_for = None
                self._pending.appendleft((job_id, order))
                continue
            worker.run = (job_id, order.attempt)
            self.messages.put_nowait(RunStarted(job_id, order.attempt))

    def run(self, job_id: str, order: RunOrder) -> None:
        """Run the order on the next free worker (it waits here until there is one)."""
        self._pending.append((job_id, order))
        self._hand_out()

    def _find(self, job_id: str, attempt: int | None = None) -> _Worker | None:
        for worker in self._workers:
            run = worker.run
            if run is not None and run[0] == job_id and attempt in (None, run[1]):
                return worker
        return None

    def _unqueue(self, job_id: str) -> None:
        """Drop a run that never started; it is reported stopped at its resume point."""
        for item in list(self._pending):
            if item[0] == job_id:
                self._pending.remove(item)
                self.messages.put_nowait(JobPreempted(job_id, item[1].attempt, step=-1))

    def request_stop(self, job_id: str, reason: StopReason) -> None:
        """Ask the job's run to stop at its next check; a run still waiting never starts."""
        worker = self._find(job_id)
        if worker is not None:
            worker.flag.value = int(reason)
        else:
            self._unqueue(job_id)

    def kill(self, job_id: str, attempt: int) -> None:
        """SIGKILL the worker running this run; it is replaced and the run reported dead."""
        worker = self._find(job_id, attempt)
        if worker is None:
            self._unqueue(job_id)
            return
        worker.doomed = True
        if worker.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signal.SIGKILL)

    def idle(self) -> int:
        return sum(1 for w in self._workers if w.free)

    @property
    def serving(self) -> bool:
        """Started and not closing: a worker being replaced is a gap, not an outage."""
        return bool(self._workers) and not self._closing

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Close every worker: EOF on its pipe ends an idle one; stragglers are killed."""
        self._closing = True
        for worker in self._workers:
            hang_up(worker.conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for worker in self._workers:
            remaining = max(0.0, deadline - loop.time())
            await asyncio.to_thread(worker.process.join, remaining)
            if worker.process.is_alive():
                log.warning(
                    "worker killed: it did not end when its pipe closed", pid=worker.process.pid
                )
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5)


def hang_up(conn: ParentEnd) -> None:
    """Close the pool's end of a worker's pipe so that the worker reads EOF at once.

    The end's reader thread is blocked in ``recv`` on it; on Linux, closing a descriptor
    another thread is reading leaves the socket open, so the worker would wait on, idle,
    until it is killed. Shut down, the socket ends both reads: the worker's (EOF: it exits)
    and the reader thread's (EOF: it reports the exit)."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as end:
        end.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()
