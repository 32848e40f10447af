"""``model-trainer run``: one job in this process, without Kafka, events as JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from model_trainer_contracts import (
    ConfigEventV1,
    ModelTrainerError,
    ProgressEventV1,
    SubmitJobV1,
    encode,
)

from .engine import run_job  # validates the job before any work
from .engine.context import RunContext
from .envelope import failed_event


def run_local(job: SubmitJobV1, data_root: Path, artifacts_root: Path, stream: TextIO) -> int:
    """Run ``job``; write each event to ``stream``; return 0 when it completes, else 1."""

    def emit(event: ConfigEventV1 | ProgressEventV1) -> None:
        stream.write(encode(event).decode() + "\n")
        stream.flush()

    ctx = RunContext(job=job, data_root=data_root, artifacts_root=artifacts_root, emit=emit)
    try:
        completed = run_job(ctx)
    except ModelTrainerError as exc:
        stream.write(encode(failed_event(ctx.envelope(), exc)).decode() + "\n")
        return 1
    stream.write(encode(completed).decode() + "\n")
    return 0
