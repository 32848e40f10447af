"""What the service records beside Kafka, and how its settings become the book's policy.

:func:`journal` runs for every transaction the book asks for: Prometheus counters, and each
job event appended to the job's ``metrics.jsonl`` (the artifact's own copy of its history).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from model_trainer_contracts import CompletedEventV1, EventBase, FailedEventV1, ProgressEventV1

from model_trainer.book.effects import Policy, Publish
from model_trainer.core import storage
from model_trainer.core.layout import METRICS, append_metrics, release_checkpoints
from model_trainer.core.tenancy import DEFAULT_TENANT, tenant_root, tenant_url
from model_trainer.metrics import DEAD_LETTERS, JOBS_FINISHED
from model_trainer.settings import Settings

log = structlog.get_logger(__name__)
METRICS_MAX_BYTES = 64 << 20  # a job's metrics.jsonl takes no more progress lines past this


def policy_of(settings: Settings) -> Policy:
    return Policy(
        commands_topic=settings.commands_topic,
        events_topic=settings.events_topic,
        state_topic=settings.state_topic,
        dead_letter_topic=settings.dead_letter_topic,
        slots=settings.workers,
        max_running_per_user=settings.max_running_per_user,
        max_progress_per_s=settings.max_progress_per_s,
        state_retention_s=settings.state_retention_s,
        state_every_s=settings.state_every_s,
        max_attempts=settings.max_attempts,
        cancel_grace_s=settings.cancel_grace_s,
        handback_grace_s=settings.handback_grace_s,
        stall_timeout_s=settings.stall_timeout_s,
        checkpoint_every=settings.checkpoint_every,
        data_root=settings.data_root.resolve(),
        artifacts_root=settings.artifacts_root.resolve(),
        max_corpus_bytes=settings.max_corpus_bytes,
        max_command_bytes=settings.max_command_bytes,
        default_timeout_s=settings.default_timeout_s,
        artifacts_url=settings.artifacts_url,
        storage_retry_s=settings.storage_retry_s,
        disk_full_retry_s=settings.disk_full_retry_s,
        tenants=settings.tenancy.tenants,
        admin_tenant=settings.tenancy.admin,
    )


def journal(publish: Publish, settings: Settings, committed: asyncio.Future[None]) -> None:
    """Metrics, each event in its job's metrics.jsonl (a refused job has no folder), and an
    ended job's checkpoints removed once its terminal event is committed (completed, failed or
    cancelled: nothing resumes it after that; a crash before the commit resumes from them)."""
    tenant = settings.tenancy.tenant_of(publish.via.topic) or DEFAULT_TENANT
    root = tenant_root(settings.artifacts_root, tenant)
    if publish.ended is not None:
        folder = root / publish.ended
        url = tenant_url(settings.artifacts_url, tenant)

        def release(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                release_checkpoints(folder)
                if url is not None and publish.ended is not None:
                    storage.release_checkpoints(url, publish.ended)

        committed.add_done_callback(release)
    for record in publish.records:
        if record.topic == settings.dead_letter_topic:
            DEAD_LETTERS.labels(code=dict(record.headers)["error_code"].decode()).inc()
    for event in publish.events:
        folder = root / event.job_id
        if isinstance(event, FailedEventV1):
            if event.details.get("command_rejected") is not True:
                JOBS_FINISHED.labels(outcome="failed").inc()
            if not folder.is_dir():
                continue
        elif isinstance(event, CompletedEventV1):
            JOBS_FINISHED.labels(outcome="completed").inc()
        _append(folder, event)


def _append(folder: Path, event: EventBase) -> None:
    """The job's own copy of its history is best effort: a full disk (or a job's metrics
    past ``METRICS_MAX_BYTES``, for progress lines) must never stop the service, whose
    Kafka topics hold the events anyway."""
    try:
        path = folder / METRICS
        full = path.is_file() and path.stat().st_size > METRICS_MAX_BYTES
        if full and isinstance(event, ProgressEventV1):
            return
        append_metrics(folder, event)
    except OSError as exc:
        log.warning("metrics.jsonl not written", job_id=event.job_id, error=str(exc))
