"""A pool whose workers are scripted trainers, in the service's own process (:class:`PoolPort`).

It stands where :class:`~model_trainer.pool.pool.WorkerPool` stands, at the shell's edge (the
shell is what the world's tests test), and keeps the real pool's promises: an order waits for
a free slot; each run is announced (:class:`RunStarted`) and ends in exactly one of
:class:`JobEnded`, :class:`JobPreempted` or :class:`WorkerDied`; a stop request is obeyed at
the next step, a kill at once. A run says its config, then a progress event a step, one step
every ``step_s`` (none past :attr:`Disk.hold_after` while it is set), and completes; it
checkpoints every ``checkpoint_every`` steps and when it stops, into :class:`Disk` (the
checkpoints both instances' pools see, as they share the artifacts volume), and a later run
resumes from there.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
from model_trainer.core.envelope import Envelope, failed_event
from model_trainer.core.stop import StopReason
from model_trainer.pool.protocol import (
    JobEnded,
    JobEvent,
    JobLog,
    JobPreempted,
    RunOrder,
    RunReport,
    RunStarted,
    WorkerDied,
)
from model_trainer.settings import Settings
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
    encode,
)

from tests.runtime.book_helpers import progress

KILLED = -9


@dataclass
class Disk:
    """What the instances share: each job's last checkpointed step, and every run begun."""

    checkpoints: dict[str, int] = field(default_factory=dict)
    runs: list[tuple[str, int, int]] = field(default_factory=list)  # job, attempt, from step
    hold_after: int | None = None  # runs wait past this step (still obeying a stop) until None

    def holds(self, step: int) -> bool:
        return self.hold_after is not None and step > self.hold_after


@dataclass
class _Run:
    job_id: str
    attempt: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop: StopReason | None = None


def _ignore(_line: JobLog) -> None:
    pass


class ScriptedPool:
    """``settings.workers`` slots of scripted trainers (see the module)."""

    def __init__(self, settings: Settings, disk: Disk, step_s: float = 0.05) -> None:
        self._slots = settings.workers
        self._disk = disk
        self._step_s = step_s
        self._pending: deque[tuple[str, RunOrder]] = deque()
        self._running: dict[str, _Run] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        self._closing = False
        self.messages: asyncio.Queue[RunReport] = asyncio.Queue()
        self.cuda = False
        self.on_log: Callable[[JobLog], None] = _ignore

    @classmethod
    def factory(cls, disk: Disk, step_s: float = 0.05) -> Callable[[Settings], ScriptedPool]:
        return lambda settings: cls(settings, disk, step_s)

    @property
    def serving(self) -> bool:
        return self._tasks is not None and not self._closing

    async def start(self) -> None:
        pass

    async def supervise(self) -> None:
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._hand_out()
            await anyio.sleep_forever()

    def run(self, job_id: str, order: RunOrder) -> None:
        self._pending.append((job_id, order))
        self._hand_out()

    def _hand_out(self) -> None:
        while self._tasks is not None and self._pending and len(self._running) < self._slots:
            job_id, order = self._pending.popleft()
            run = _Run(job_id, order.attempt)
            self._running[job_id] = run
            self.messages.put_nowait(RunStarted(job_id, order.attempt))
            self._tasks.start_soon(self._train, run, order)

    def _end(self, run: _Run, message: RunReport) -> None:
        if self._running.get(run.job_id) is run:
            del self._running[run.job_id]
        self.messages.put_nowait(message)
        self._hand_out()

    async def _train(self, run: _Run, order: RunOrder) -> None:
        with run.scope:
            spec = SubmitJobV1.model_validate_json(order.job_json)
            total = spec.training.max_steps or 1
            start = self._disk.checkpoints.get(run.job_id, 0)
            self._disk.runs.append((run.job_id, run.attempt, start))
            envelope = Envelope(
                job_id=run.job_id,
                user_id=spec.user_id,
                seq=0,
                attempt=run.attempt,
                labels=dict(spec.labels),
            )
            self._event(run, _config(envelope, spec, order, total, start))
            for step in range(start + 1, total + 1):
                await anyio.sleep(self._step_s)
                await self._unless_held(run, step)
                if run.stop is not None:
                    self._stopped(run, envelope, step - 1)
                    return
                self._event(run, _progress(envelope, step, total))
                if step % order.checkpoint_every == 0:
                    self._disk.checkpoints[run.job_id] = step
            completed = CompletedEventV1(
                **envelope,
                steps=total,
                duration_s=total * self._step_s,
                artifact_path=str(order.artifacts_root / run.job_id),
                manifest_digest="0" * 64,
            )
            self._end(run, JobEnded(run.job_id, run.attempt, encode(completed)))

    async def _unless_held(self, run: _Run, step: int) -> None:
        while True:
            if not self._disk.holds(step) or run.stop is not None:
                return
            await anyio.sleep(self._step_s)

    def _event(self, run: _Run, event: ConfigEventV1 | ProgressEventV1) -> None:
        self.messages.put_nowait(JobEvent(run.job_id, run.attempt, encode(event)))

    def _stopped(self, run: _Run, envelope: Envelope, step: int) -> None:
        """Checkpoint where it is, then stop as asked (as the engine does)."""
        self._disk.checkpoints[run.job_id] = step
        if run.stop is StopReason.SHUTDOWN:
            self._end(run, JobPreempted(run.job_id, run.attempt, step))
            return
        code = (
            ModelTrainerErrorCode.TRAINING_CANCELLED
            if run.stop is StopReason.CANCEL
            else ModelTrainerErrorCode.TRAINING_TIMEOUT
        )
        error = ModelTrainerError(code, f"stopped at step {step}", stage="train")
        self._end(run, JobEnded(run.job_id, run.attempt, encode(failed_event(envelope, error))))

    def request_stop(self, job_id: str, reason: StopReason) -> None:
        run = self._running.get(job_id)
        if run is not None:
            run.stop = reason
        else:
            self._unqueue(job_id)

    def kill(self, job_id: str, attempt: int) -> None:
        run = self._running.get(job_id)
        if run is None or run.attempt != attempt:
            self._unqueue(job_id)
            return
        run.scope.cancel()
        self._end(run, WorkerDied(job_id, attempt, KILLED))

    def _unqueue(self, job_id: str) -> None:
        for item in list(self._pending):
            if item[0] == job_id:
                self._pending.remove(item)
                self.messages.put_nowait(JobPreempted(job_id, item[1].attempt, step=-1))

    async def stop(self, timeout_s: float = 10.0) -> None:
        """The service is going: every run ends with it, saying nothing (its process dies)."""
        self._closing = True
        for run in self._running.values():
            run.scope.cancel()
        self._running.clear()


def _config(
    envelope: Envelope, spec: SubmitJobV1, order: RunOrder, total: int, start: int
) -> ConfigEventV1:
    return ConfigEventV1(
        **envelope,
        backend=spec.backend,
        model_family="scripted",
        model_size="0M",
        num_parameters=0,
        tokenizer="none",
        vocab_size=1,
        train_tokens=0,
        val_tokens=0,
        test_tokens=0,
        total_steps=total,
        total_epochs=1,
        start_step=start,
        device="cpu",
        precision="fp32",
        optimal_threads=1,
        cpu_cores=1,
        memory_gb=0.0,
        batch_size=1,
        learning_rate=1e-3,
        queue=order.queue,
    )


def _progress(envelope: Envelope, step: int, total: int) -> ProgressEventV1:
    return progress(envelope["job_id"], step, total).model_copy(update=envelope)
