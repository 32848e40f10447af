"""What the service records beside Kafka, and how its settings become the book's policy.

:func:`journal` runs for every transaction the book asks for: Prometheus counters, and each
job event appended to the job's ``metrics.jsonl`` (the artifact's own copy of its history).
"""

from __future__ import annotations

import asyncio
from dataclasses import fields
from pathlib import Path

import structlog
from model_trainer_contracts import CompletedEventV1, EventBase, FailedEventV1, ProgressEventV1
from pydantic import TypeAdapter

from model_trainer.book.effects import DeadLetter, Policy, Publish
from model_trainer.core import storage
from model_trainer.core.layout import METRICS, append_metrics, release_checkpoints
from model_trainer.core.tenancy import DEFAULT_TENANT, tenant_root, tenant_url
from model_trainer.metrics import DEAD_LETTERS, JOBS_FINISHED
from model_trainer.settings import Settings

log = structlog.get_logger(__name__)
METRICS_MAX_BYTES = 64 << 20  # a job's metrics.jsonl takes no more progress lines past this


_POLICY = TypeAdapter(Policy)


def policy_of(settings: Settings) -> Policy:
    """The book's policy: each field is the setting of its name, but for those derived here
    (a field the settings lack and this does not derive fails the service's start)."""
    derived: dict[str, object] = {
        "slots": settings.workers,
        "data_root": settings.data_root.resolve(),
        "artifacts_root": settings.artifacts_root.resolve(),
        "tenants": settings.tenancy.tenants,
        "admin_tenant": settings.tenancy.admin,
    }
    named = {f.name: getattr(settings, f.name) for f in fields(Policy) if f.name not in derived}
    return _POLICY.validate_python(named | derived)


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
    for fact in publish.facts:
        if isinstance(fact, DeadLetter):
            DEAD_LETTERS.labels(code=str(fact.error.code)).inc()
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
