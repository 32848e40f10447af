"""The executor pool: N worker processes, one job each at a time, replaced when they die.

Workers are spawned (not forked) before any job arrives and import torch once; the service
process never does. A reader thread per worker turns its pipe into messages on an asyncio
queue, so a training loop's ``send`` never waits on the event loop. A worker that exits or is
killed shows up as :class:`WorkerDied` with the job it was running; a fresh worker takes its
place.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess

import structlog

from .core.stop import NO_STOP, StopReason
from .metrics import WORKER_RESTARTS
from .protocol import (
    JobEnded,
    JobEvent,
    JobPreempted,
    ParentEnd,
    RunOrder,
    StopFlag,
    WorkerMessage,
    WorkerReady,
    worker_entry,
)

log = structlog.get_logger(__name__)
_spawn = multiprocessing.get_context("spawn")
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class WorkerDied:
    """A worker process ended; ``job_id`` is the job it was running, if any."""

    job_id: str | None
    exitcode: int | None
    killed_by_pool: bool


PoolMessage = JobEvent | JobEnded | JobPreempted | WorkerDied


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
    job_id: str | None = None
    killed_by_pool: bool = False


class WorkerPool:
    """Runs :class:`RunOrder`s on worker processes; outcomes arrive on :attr:`messages`."""

    def __init__(self, size: int, threads: int, log_level: str, log_format: str) -> None:
        self._size = size
        self._threads = threads
        self._log_args = (log_level, log_format)
        self._workers: list[_Worker] = []
        self._raw: asyncio.Queue[WorkerMessage | _Exited | tuple[int, WorkerMessage]] = (
            asyncio.Queue()
        )
        self.messages: asyncio.Queue[PoolMessage] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    async def start(self) -> None:
        """Spawn every worker and return once all have imported torch."""
        self._loop = asyncio.get_running_loop()
        self._workers = [self._spawn(index) for index in range(self._size)]
        self._supervisor = asyncio.create_task(self._supervise(), name="pool-supervisor")
        await asyncio.wait_for(
            asyncio.gather(*(worker.ready.wait() for worker in self._workers)), READY_TIMEOUT_S
        )
        log.info("worker pool ready", workers=self._size, threads_per_worker=self._threads)

    def _spawn(self, index: int) -> _Worker:
        parent, child = _spawn.Pipe()
        flag: StopFlag = _spawn.Value("i", NO_STOP)
        process = _spawn.Process(
            target=worker_entry,
            args=(child, flag, self._threads, *self._log_args),
            name=f"model-trainer-worker-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        worker = _Worker(index, process, parent, flag)
        threading.Thread(
            target=self._read, args=(index, process, parent), daemon=True, name=f"pool-read-{index}"
        ).start()
        return worker

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
            loop.call_soon_threadsafe(self._raw.put_nowait, (index, message))

    async def _supervise(self) -> None:
        while True:
            item = await self._raw.get()
            if isinstance(item, _Exited):
                await self._on_exit(item)
                continue
            if not isinstance(item, tuple):
                continue
            index, message = item
            worker = self._workers[index]
            if isinstance(message, WorkerReady):
                worker.ready.set()
            elif isinstance(message, JobEvent):
                self.messages.put_nowait(message)
            elif isinstance(message, JobEnded | JobPreempted):
                worker.job_id = None
                self.messages.put_nowait(message)

    async def _on_exit(self, exited: _Exited) -> None:
        worker = self._workers[exited.index]
        if worker.process is not exited.process:
            return
        with contextlib.suppress(OSError):
            worker.conn.close()
        if self._closing:
            return
        log.warning(
            "worker died; replacing it",
            worker=exited.index,
            exitcode=exited.process.exitcode,
            job_id=worker.job_id,
        )
        WORKER_RESTARTS.inc()
        died = WorkerDied(worker.job_id, exited.process.exitcode, worker.killed_by_pool)
        self._workers[exited.index] = self._spawn(exited.index)
        self.messages.put_nowait(died)

    def idle(self) -> int:
        """Workers ready for a job now."""
        return sum(1 for w in self._workers if w.job_id is None and w.ready.is_set())

    def running(self) -> list[str]:
        return [w.job_id for w in self._workers if w.job_id is not None]

    def pid_of(self, job_id: str) -> int | None:
        worker = self._find(job_id)
        return worker.process.pid if worker is not None else None

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def run(self, job_id: str, order: RunOrder) -> None:
        """Hand the job to an idle worker; the caller checks :meth:`idle` first."""
        worker = next(w for w in self._workers if w.job_id is None and w.ready.is_set())
        worker.flag.value = NO_STOP
        worker.job_id = job_id
        worker.killed_by_pool = False
        worker.conn.send(order)

    def _find(self, job_id: str) -> _Worker | None:
        return next((w for w in self._workers if w.job_id == job_id), None)

    def request_stop(self, job_id: str, how: StopReason) -> bool:
        """Ask the job's training loop to stop at its next step."""
        worker = self._find(job_id)
        if worker is None:
            return False
        worker.flag.value = int(how)
        return True

    def kill(self, job_id: str) -> bool:
        """SIGKILL the job's worker; it is replaced and reported with ``killed_by_pool``."""
        worker = self._find(job_id)
        if worker is None or worker.process.pid is None:
            return False
        worker.killed_by_pool = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signal.SIGKILL)
        return True

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Close every worker: EOF on its pipe ends an idle one; stragglers are killed."""
        self._closing = True
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for worker in self._workers:
            remaining = max(0.0, deadline - loop.time())
            await asyncio.to_thread(worker.process.join, remaining)
            if worker.process.is_alive():
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
