"""Prometheus metrics of the service process (served on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

REGISTRY = CollectorRegistry()
REGISTRY.register(PROCESS_COLLECTOR)  # memory, CPU, open files of the service process
REGISTRY.register(PLATFORM_COLLECTOR)

JOBS = Gauge("model_trainer_jobs", "Jobs on this instance by state.", ["state"], registry=REGISTRY)
JOBS_FINISHED = Counter(
    "model_trainer_jobs_finished",
    "Jobs that reached a terminal event.",
    ["outcome"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "model_trainer_job_duration_seconds",
    "Wall time from start to terminal event.",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
    registry=REGISTRY,
)
EVENTS_PUBLISHED = Counter(
    "model_trainer_events_published", "Records committed to Kafka.", registry=REGISTRY
)
PUBLISH_RETRIES = Counter(
    "model_trainer_publish_retries", "Publish transactions retried.", registry=REGISTRY
)
WORKER_RESTARTS = Counter(
    "model_trainer_worker_restarts", "Worker processes replaced after dying.", registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "model_trainer_dead_letters",
    "Commands sent to the dead-letter topic.",
    ["code"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "model_trainer_consumer_lag",
    "Records behind the end of each commands partition.",
    ["partition"],
    registry=REGISTRY,
)
LOG_LINES_DROPPED = Counter(
    "model_trainer_log_lines_dropped",
    "Jobs' log lines not published: the buffer was full or the broker refused them.",
    registry=REGISTRY,
)
CONNECTION_ERRORS = Counter(
    "model_trainer_kafka_connection_errors",
    "Kafka client connection errors (retried by the client; not logged one by one).",
    registry=REGISTRY,
)
SWEPT = Counter(
    "model_trainer_swept",
    "What the sweep of the artifacts root deleted: temp files and staging folders, "
    "token-cache entries, ended jobs' checkpoints folders.",
    ["kind"],
    registry=REGISTRY,
)
SWEPT_BYTES = Counter(
    "model_trainer_swept_bytes",
    "Bytes the sweep of the artifacts root freed, by kind.",
    ["kind"],
    registry=REGISTRY,
)
