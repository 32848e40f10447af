"""``model-trainer run``: one job in this process, without Kafka, events as JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from model_trainer_contracts import (
    EventBase,
    FailedEventV1,
    ModelTrainerError,
    SubmitJobV1,
    encode,
)

from model_trainer.core.envelope import failed_event
from model_trainer.core.layout import append_metrics, release_checkpoints
from model_trainer.core.stop import stop_at_deadline
from model_trainer.engine import run_job  # validates the job before any work
from model_trainer.engine.context import RunContext

LOCAL_CHECKPOINT_EVERY = 200  # as the service's default


def run_local(
    job: SubmitJobV1, data_root: Path, artifacts_root: Path, stream: TextIO, *, now: float
) -> int:
    """Run ``job``; write each event to ``stream`` and the job's metrics.jsonl; return 0 when
    it completes, else 1. The local runner numbers events itself (seq 0, 1, ...)."""
    job_dir = artifacts_root / job.job_id
    seq = 0

    def publish(event: EventBase) -> None:
        nonlocal seq
        numbered = event.model_copy(update={"seq": seq})
        seq += 1
        stream.write(encode(numbered).decode() + "\n")
        stream.flush()
        if not isinstance(numbered, FailedEventV1) or job_dir.is_dir():
            append_metrics(job_dir, numbered)  # a job refused up front gets no folder

    deadline = now + job.timeout_s if job.timeout_s is not None else None
    ctx = RunContext(
        job=job,
        data_root=data_root,
        artifacts_root=artifacts_root,
        checkpoint_every=job.training.checkpoint_every or LOCAL_CHECKPOINT_EVERY,
        emit=publish,
        stop_requested=stop_at_deadline(deadline),
    )
    try:
        completed = run_job(ctx)
    except ModelTrainerError as exc:
        publish(failed_event(ctx.envelope(), exc))
        return 1
    publish(completed)
    release_checkpoints(job_dir)
    return 0
