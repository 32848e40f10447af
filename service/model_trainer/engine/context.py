"""What a training run is handed by whoever runs it: the job, where to write, how to report.

The engine never talks to Kafka. The runtime (a pool worker, or ``model-trainer run``) builds
a :class:`RunContext`; the engine emits config and progress events through it, asks it at
every step whether to stop, and returns the completed event or raises
:class:`~model_trainer_contracts.ModelTrainerError` (or :class:`Preempted`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from model_trainer_contracts import ConfigEventV1, ProgressEventV1, SubmitJobV1

from model_trainer.envelope import Envelope


class StopReason(StrEnum):
    CANCEL = "cancel"  # end with TRAINING_CANCELLED, keeping the checkpoint
    TIMEOUT = "timeout"  # end with TRAINING_TIMEOUT, keeping the checkpoint
    SHUTDOWN = "shutdown"  # checkpoint and raise Preempted: another attempt resumes it


class Preempted(Exception):
    """The run was checkpointed at ``step`` and stopped without a terminal event."""

    def __init__(self, step: int) -> None:
        super().__init__(f"preempted at step {step}")
        self.step = step


def _never_stop() -> StopReason | None:
    return None


def _discard(_event: ConfigEventV1 | ProgressEventV1) -> None:
    return None


@dataclass
class RunContext:
    """One attempt of one job.

    ``job_dir`` is the job's own folder under ``artifacts_root``: the engine keeps its
    checkpoints in ``job_dir / "checkpoints"`` and writes the finished artifact into
    ``job_dir``. Earlier jobs (``init_from``, a tokenizer by job) are found as
    ``artifacts_root / <job_id>``. ``first_seq`` is the seq of this attempt's first event.
    """

    job: SubmitJobV1
    data_root: Path
    artifacts_root: Path
    attempt: int = 1
    first_seq: int = 0
    queue: str = "local"
    threads: int = 1
    checkpoint_every: int = 500
    max_corpus_bytes: int = 1 << 30
    emit: Callable[[ConfigEventV1 | ProgressEventV1], None] = _discard
    stop_requested: Callable[[], StopReason | None] = _never_stop
    _seq: itertools.count[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._seq = itertools.count(self.first_seq)

    @property
    def job_dir(self) -> Path:
        return self.artifacts_root / self.job.job_id

    def envelope(self) -> Envelope:
        """Envelope fields for the next event; each call takes the next ``seq``."""
        return Envelope(
            job_id=self.job.job_id,
            user_id=self.job.user_id,
            seq=next(self._seq),
            attempt=self.attempt,
            labels=dict(self.job.labels),
        )
