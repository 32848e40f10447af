"""``model-trainer run``: one job in this process, without Kafka, events as JSON lines."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

from model_trainer_contracts import (
    EventBase,
    FailedEventV1,
    ModelTrainerError,
    SubmitJobV1,
    encode,
)

from model_trainer.core.distributed import Rank
from model_trainer.core.envelope import Envelope, failed_event
from model_trainer.core.layout import append_metrics, release_checkpoints
from model_trainer.core.stop import stop_at_deadline
from model_trainer.core.trainjob import rank_from_env
from model_trainer.engine import distributed, run_job  # run_job validates the job first
from model_trainer.engine.context import RunContext

LOCAL_CHECKPOINT_EVERY = 200  # as the service's default


def run_local(
    job: SubmitJobV1,
    data_root: Path,
    artifacts_root: Path,
    stream: TextIO,
    *,
    now: float,
    rank: Rank | None = None,
    artifacts_url: str | None = None,
) -> int:
    """Run ``job``; write each event to ``stream`` and the job's metrics.jsonl; return 0 when
    it completes, else 1. The local runner numbers events itself (seq 0, 1, ...).

    ``rank``: this process is one rank of the job (its process group joined already); only
    rank 0 writes events, as in the service."""
    job_dir = artifacts_root / job.job_id
    seq = 0

    def publish(event: EventBase) -> None:
        nonlocal seq
        if rank is not None and not rank.leader:
            return
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
        rank=rank,
        artifacts_url=artifacts_url,
    )
    try:
        completed = run_job(ctx)
    except ModelTrainerError as exc:
        publish(failed_event(ctx.envelope(), exc))
        return 1
    publish(completed)
    if rank is None or rank.leader:
        release_checkpoints(job_dir)
    return 0


def run_rank(
    job: SubmitJobV1, data_root: Path, artifacts_root: Path, artifacts_url: str | None
) -> int:
    """Run ``job`` as the rank ``torchrun`` started this process as (its environment), in the
    job's process group (gloo, ``env://``): rank 0 prints the events, as :func:`run_local`."""
    try:
        rank = rank_from_env(job, os.environ)
    except ModelTrainerError as exc:  # before any group: every rank says why, and fails
        envelope = Envelope(
            job_id=job.job_id, user_id=job.user_id, seq=0, attempt=1, labels=dict(job.labels)
        )
        sys.stdout.write(encode(failed_event(envelope, exc)).decode() + "\n")
        return 1
    distributed.join(rank)
    try:
        return run_local(
            job,
            data_root,
            artifacts_root,
            sys.stdout,
            now=time.time(),
            rank=rank,
            artifacts_url=artifacts_url,
        )
    finally:
        distributed.leave()
