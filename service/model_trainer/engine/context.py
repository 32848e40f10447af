"""What a training run is handed by whoever runs it: the job, where to write, how to report.

The engine never talks to Kafka. The runtime (a pool worker, or ``model-trainer run``) builds
a :class:`RunContext`; the engine emits config and progress events through it, asks it at
every step (and between the phases before and after training) whether to stop, and returns
the completed event or raises :class:`~model_trainer_contracts.ModelTrainerError` (or
:class:`Preempted`).

Events leave the engine with ``seq`` 0: whoever publishes them numbers them (the service's
job book, or the local runner), since only the publisher sees every event a job gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_trainer_contracts import (
    ConfigEventV1,
    DownloadEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    Stage,
    SubmitJobV1,
)

from model_trainer.core.envelope import Envelope
from model_trainer.core.stop import StopReason


class Preempted(Exception):
    """The run was checkpointed at ``step`` and stopped without a terminal event."""

    def __init__(self, step: int) -> None:
        super().__init__(f"preempted at step {step}")
        self.step = step


class Superseded(Preempted):
    """A later attempt (``by``) owns the job: this run stops without writing anything more.

    It is reported as preempted: the service keeps no run of an attempt it has moved past,
    and an orphaned run's report reaches no one."""

    def __init__(self, step: int, by: int) -> None:
        super().__init__(step)
        self.by = by


def _never_stop() -> StopReason | None:
    return None


def _discard(_event: ConfigEventV1 | ProgressEventV1) -> None:
    return None


def _discard_download(_event: DownloadEventV1) -> None:
    return None


@dataclass
class RunContext:
    """One attempt of one job.

    ``job_dir`` is the job's own folder under ``artifacts_root``: the engine keeps its
    checkpoints in ``job_dir / "checkpoints"`` and writes the finished artifact into
    ``job_dir``. Earlier jobs (``init_from``, a tokenizer by job) are found as
    ``artifacts_root / <job_id>``. ``stop_requested`` also carries the job's deadline
    (see :func:`model_trainer.core.stop.stop_at_deadline`): the engine reads no clock for it.
    ``memory_budget_mb``: refuse the job (RESOURCE_LIMIT_EXCEEDED) when its memory estimate is
    over it, before any work and again with the vocabulary it built (None: no check).
    """

    job: SubmitJobV1
    data_root: Path
    artifacts_root: Path
    attempt: int = 1
    queue: str = "local"
    threads: int = 1
    checkpoint_every: int = 500  # the job's own, or the runner's default: resolved already
    max_corpus_bytes: int = 1 << 30
    emit: Callable[[ConfigEventV1 | ProgressEventV1], None] = _discard
    # A long corpus download's events (before the config event; none for a short one).
    emit_download: Callable[[DownloadEventV1], None] = _discard_download
    stop_requested: Callable[[], StopReason | None] = _never_stop
    memory_budget_mb: int | None = None
    # Object storage (``s3://bucket/prefix``): checkpoints and the artifact go there too,
    # and the completed event names the artifact's URL; None: local files only.
    artifacts_url: str | None = None
    storage_retry_s: float = 120.0  # how long a run waits for its store, then fails retryably

    @property
    def job_dir(self) -> Path:
        return self.artifacts_root / self.job.job_id

    def envelope(self) -> Envelope:
        """Envelope fields for an event of this attempt (``seq`` 0: the publisher numbers it)."""
        return Envelope(
            job_id=self.job.job_id,
            user_id=self.job.user_id,
            seq=0,
            attempt=self.attempt,
            labels=dict(self.job.labels),
        )

    def obey_stop(self, stage: Stage, step: int) -> None:
        """Stop now, outside a training step, when asked to (nothing new to checkpoint)."""
        reason = self.stop_requested()
        if reason is not None:
            raise stopped(reason, step, stage)


def stopped(reason: StopReason, step: int, stage: Stage) -> Exception:
    """What the engine raises for a stop: Preempted on shutdown, else the typed failure."""
    if reason is StopReason.SHUTDOWN:
        return Preempted(step)
    code = (
        ModelTrainerErrorCode.TRAINING_CANCELLED
        if reason is StopReason.CANCEL
        else ModelTrainerErrorCode.TRAINING_TIMEOUT
    )
    return ModelTrainerError(
        code, f"stopped at step {step} ({reason.name.lower()})", details={"step": step}, stage=stage
    )
