"""Every setting of the service, read once from the environment (``MODEL_TRAINER_*``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from model_trainer_contracts import (
    COMMANDS_TOPIC,
    DEAD_LETTER_TOPIC,
    EVENTS_TOPIC,
    MAX_COMMAND_BYTES,
)
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .limits import default_worker_memory_mb

ENV_PREFIX = "MODEL_TRAINER_"


def _default_workers() -> int:
    # One job per worker and at least two torch threads per job: fewer, faster jobs beat
    # many jobs fighting over the same cores.
    return max(1, (os.cpu_count() or 1) // 2)


class Settings(BaseSettings):
    """The service's configuration. Each field is the env var ``MODEL_TRAINER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(
            "MODEL_TRAINER_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers"
        ),
        description="Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS is read too).",
    )
    commands_topic: str = Field(COMMANDS_TOPIC, description="Commands in: submit, cancel.")
    events_topic: str = Field(EVENTS_TOPIC, description="Events out, keyed by job_id.")
    dead_letter_topic: str = Field(
        DEAD_LETTER_TOPIC, description="Refused commands: original bytes, error in headers."
    )
    state_topic: str = Field("trainer.jobs.state", description="Compacted job-state topic.")
    group_id: str = Field("model-trainer", description="Consumer group of all instances.")
    instance_id: str | None = Field(
        None,
        description="Stable id of this instance: static group membership, and the producer's "
        "transactional id, so a restart fences its predecessor at once. Unique per instance.",
    )
    create_topics: bool = Field(True, description="Create missing topics at start-up.")
    events_retention_ms: int = Field(
        30 * 24 * 3600 * 1000,
        ge=-1,
        description="retention.ms of the events topic it creates (-1: for ever); dashboards "
        "and exports rebuild every job of this window.",
    )
    topic_partitions: int = Field(4, ge=1, description="Partitions of topics it creates.")
    replication_factor: int = Field(1, ge=1, description="Replicas of topics it creates.")

    workers: int = Field(
        default_factory=_default_workers, ge=1, le=256, description="Worker processes (cores/2)."
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch threads per worker (default: cores / workers)."
    )
    worker_memory_mb: int | None = Field(
        None,
        ge=64,
        description="Memory budget of each worker, in MiB (default: 80% of the host's or "
        "container's memory / workers). A job whose estimated peak is over it is refused with "
        "RESOURCE_LIMIT_EXCEEDED; a worker's heap is limited to its idle size plus this.",
    )
    memory_check: bool = Field(
        True,
        description="Refuse jobs whose memory estimate is over worker_memory_mb, at "
        "acceptance and again in the worker with the real vocabulary; false: admit them, and "
        "only the worker's limit applies (a job that does not fit fails with TRAINING_OOM).",
    )
    queue_size: int = Field(
        64, ge=0, description="Accepted jobs waiting for a worker before partitions pause."
    )
    max_attempts: int = Field(
        2,
        ge=1,
        description="Infrastructure failures (worker death, stall) a job may have before it "
        "fails with RUN_WORKER_DIED or TRAINING_STALLED; preemptions never count.",
    )
    cancel_grace_s: float = Field(
        3.0,
        gt=0,
        description="A cancelled or timed-out run that has not stopped by then is killed "
        "(a cancel then ends the job within this grace plus one clock tick).",
    )
    stall_timeout_s: float = Field(
        600.0,
        gt=0,
        description="A run that sends nothing for this long is killed and retried as an "
        "infrastructure failure (per job: the submit's stall_timeout_s).",
    )
    shutdown_grace_s: float = Field(30.0, gt=0, description="SIGTERM to exit, at most.")
    checkpoint_every: int = Field(200, ge=1, description="Default steps between checkpoints.")

    data_root: Path = Field(Path("data"), description="Corpora paths are relative to this.")
    artifacts_root: Path = Field(Path("artifacts"), description="One folder per job.")
    max_command_bytes: int = Field(
        min(MAX_COMMAND_BYTES, 1_000_000),
        ge=1024,
        description="Larger commands: COMMAND_TOO_LARGE (Kafka's default record limit is 1 MB).",
    )
    max_corpus_bytes: int = Field(1 << 30, ge=1, description="Larger: CORPUS_TOO_LARGE.")

    http_host: str = Field("127.0.0.1", description="Bind address of the HTTP endpoints.")
    http_port: int = Field(8080, ge=0, le=65535, description="/healthz /readyz /metrics; 0: off.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    log_format: Literal["json", "console"] = Field(
        "json", description="json: one object a line; console: for people."
    )

    # Kafka client tuning; see README "Consumer settings" for the reasoning.
    session_timeout_ms: int = Field(30_000, description="Group member declared dead after.")
    heartbeat_interval_ms: int = Field(3_000, description="Background heartbeats.")
    max_poll_interval_ms: int = Field(300_000, description="Longest gap between polls.")
    rebalance_timeout_ms: int = Field(60_000, description="Time to hand back partitions.")
    transaction_timeout_ms: int = Field(
        10_000, description="An unfinished transaction of a dead producer is aborted after."
    )

    @property
    def handback_grace_s(self) -> float:
        """How long a revoked job may take to checkpoint and stop before it is killed: half
        the rebalance timeout (the rest is for the kill and the flush), within the shutdown
        grace."""
        return min(self.rebalance_timeout_ms / 2000, max(1.0, self.shutdown_grace_s - 5))

    @property
    def worker_memory_budget_mb(self) -> int:
        """``worker_memory_mb``, or a fair share of this host's memory per worker."""
        return self.worker_memory_mb or default_worker_memory_mb(self.workers)

    @property
    def torch_threads(self) -> int:
        cores = os.cpu_count() or 1
        return self.threads_per_worker or max(1, cores // self.workers)
