"""Every setting of the service, read once from the environment (``MODEL_TRAINER_*``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal, get_args

from model_trainer_client.settings import (
    KafkaConnection,
    SaslMechanism,
    SecurityProtocol,
    sasl_mechanism,
    security_protocol,
)
from model_trainer_contracts import (
    COMMANDS_TOPIC,
    DEAD_LETTER_TOPIC,
    EVENTS_TOPIC,
    LOGS_TOPIC,
    MAX_COMMAND_BYTES,
)
from model_trainer_contracts.commands import BackendName
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_trainer.core.limits import default_worker_memory_mb
from model_trainer.core.tenancy import Tenancy

ENV_PREFIX = "MODEL_TRAINER_"
TRANSACTION_BOUND_S = 30.0  # the service's own bound on one transaction (the publisher's)
PRODUCER_REQUEST_TIMEOUT_MS = 15_000


def _default_workers() -> int:
    # One job per worker and at least two torch threads per job: fewer, faster jobs beat
    # many jobs fighting over the same cores.
    return max(1, (os.cpu_count() or 1) // 2)


class Settings(BaseSettings):
    """The service's configuration. Each field is the env var ``MODEL_TRAINER_<NAME>``."""

    # Inputs are kept out of validation errors: the Kafka password is among them.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(
            "MODEL_TRAINER_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers"
        ),
        description="Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS is read too).",
    )
    # How to connect and authenticate: one KafkaConnection (``connection``) for every client.
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        "PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (or API key).")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (or API secret); never logged."
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM CA certificate(s) the brokers' certificates are checked against "
        "(default: the system's CAs).",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate, for mutual TLS."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM key of the client certificate (unencrypted), for mutual TLS."
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host connected to."
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
    commands_retention_ms: int = Field(
        -1,
        ge=-1,
        description="retention.ms of the commands topic it creates (-1: for ever). A job's "
        "submit record must outlive the job, or a restart after it expired never ends the job; "
        "set it only above the longest job you allow.",
    )
    logs_topic: str = Field(LOGS_TOPIC, description="Jobs' log lines out, keyed by job_id.")
    logs_retention_ms: int = Field(
        7 * 24 * 3600 * 1000,
        ge=-1,
        description="retention.ms of the logs topic it creates (-1: for ever).",
    )
    logs_buffer: int = Field(
        10_000,
        ge=1,
        description="Log lines held while the broker is slow or away; past it the oldest "
        "are dropped (and counted), never training.",
    )
    topic_partitions: int = Field(4, ge=1, description="Partitions of topics it creates.")
    replication_factor: int = Field(1, ge=1, description="Replicas of topics it creates.")

    workers: int = Field(
        default_factory=_default_workers, ge=1, le=256, description="Worker processes (cores/2)."
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch threads per worker (default: cores / workers)."
    )
    worker_preload: str = Field(
        "char_lstm,gpt2,llama,pretrained",
        description="Backends a worker imports before it is ready (comma-separated); others "
        "are imported by their first job, within its memory budget. transformers' take "
        "seconds of CPU per worker.",
    )
    max_running_per_user: int | None = Field(
        None, ge=1, description="Jobs of one user_id running at once (unset: no limit)."
    )
    state_retention_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="An ended job's state record is deleted (a tombstone on the compacted "
        "topic) this long after it ended; a resubmit of its job_id within it is a duplicate.",
    )
    state_every_s: float = Field(
        30.0,
        ge=0,
        description="A running job's state record is rewritten for its progress at most this "
        "often (transitions always write one); a new owner reads the events published since "
        "from the events topic, so seq stays exact after a crash. 0: with every event.",
    )
    max_unpublished: int = Field(
        200,
        ge=1,
        description="Batches waiting for the broker past which progress events are held (the "
        "latest per job kept, published when it returns): bounds memory during an outage. "
        "Evaluations, transitions and terminal events are never held.",
    )
    max_progress_per_s: float = Field(
        2.0,
        gt=0,
        description="Progress events a job publishes a second, at most: more are coalesced, "
        "the latest values winning; evaluations and terminal events are never held back.",
    )
    shared_artifacts: bool = Field(
        False,
        description="Let a job fine-tune from (init_from) or reuse the tokenizer of another "
        "user's job; otherwise JOB_FORBIDDEN.",
    )
    tenants: str = Field(
        "",
        description="Comma-separated tenants, each with its own commands topic "
        "<commands_topic>.<tenant> (writable by its principal alone, through Kafka ACLs): a "
        "command acts for the tenant whose topic it came on. The plain topic is the 'default' "
        "tenant's.",
    )
    admin_tenant: str | None = Field(
        None, description="The tenant whose topic may also cancel other tenants' jobs."
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
    publish_stall_s: float = Field(
        120.0,
        gt=0,
        description="/healthz turns 503 once the publisher has been unable to commit for "
        "this long, so a liveness probe restarts a wedged instance.",
    )
    checkpoint_every: int = Field(200, ge=1, description="Default steps between checkpoints.")

    data_root: Path = Field(Path("data"), description="Corpora paths are relative to this.")
    artifacts_root: Path = Field(Path("artifacts"), description="One folder per job.")
    artifacts_url: str | None = Field(
        None,
        pattern=r"^s3://[^/@:]+(/.*)?$",
        description="s3://bucket/prefix: checkpoints (per attempt) and artifacts are uploaded "
        "there too, and completed events name the artifact's URL; unset: local files only.",
    )
    storage_retry_s: float = Field(
        120.0,
        gt=0,
        description="A run retries an unreachable object store with backoff this long, then "
        "fails with STORAGE_UNAVAILABLE (retryable), its last good checkpoint kept.",
    )
    sweep_interval_s: float = Field(
        3600.0,
        gt=0,
        description="The artifacts root is swept at start-up and this often: temp files a "
        "killed writer left (untouched for an hour), token-cache entries unused for "
        "token_cache_retention_s, and the checkpoints of ended jobs.",
    )
    token_cache_retention_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="A token-cache entry (a tokenized corpus, reused by jobs on the same data "
        "and tokenizer) no job has used for this long is deleted by the sweep.",
    )
    max_command_bytes: int = Field(
        min(MAX_COMMAND_BYTES, 1_000_000),
        ge=1024,
        description="Larger commands: COMMAND_TOO_LARGE (Kafka's default record limit is 1 MB).",
    )
    max_corpus_bytes: int = Field(1 << 30, ge=1, description="Larger: CORPUS_TOO_LARGE.")
    # Service-wide limits on what one job may ask, checked at acceptance (budgets.py).
    max_job_steps: int = Field(
        1_000_000, ge=1, description="A job asking more max_steps: RESOURCE_LIMIT_EXCEEDED."
    )
    max_eval_batches: int = Field(
        5_000, ge=1, description="A job asking more eval_batches: RESOURCE_LIMIT_EXCEEDED."
    )
    min_checkpoint_every: int = Field(
        5, ge=1, description="A job checkpointing more often: RESOURCE_LIMIT_EXCEEDED."
    )
    default_timeout_s: float | None = Field(
        24 * 3600.0, gt=0, description="The timeout of a job that sets none (None: no timeout)."
    )
    artifacts_budget_mb: int | None = Field(
        None,
        ge=1,
        description="The artifacts root may hold this much: a job whose estimated checkpoints "
        "and artifact would pass it is refused (RESOURCE_LIMIT_EXCEEDED). None: no budget.",
    )
    job_disk_budget_mb: int | None = Field(
        None, ge=1, description="One job's checkpoints and artifact, estimated, at most."
    )
    disk_reserve_mb: int = Field(
        1024,
        ge=0,
        description="Free space the artifacts volume keeps: a job that would eat into it is "
        "refused, and /readyz answers 503 saying why once less is free.",
    )
    disk_full_retry_s: float = Field(
        60.0,
        gt=0,
        description="A run that meets a full disk (DISK_FULL) is handed back, its last good "
        "checkpoint kept; the job waits this long in the queue, then runs again from it.",
    )

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
        60_000,
        description="The broker aborts a transaction left open this long. Longer than the "
        "service's own bound on a transaction (30 s of requests of up to 15 s), so a slow "
        "broker is retried, not taken for a fence. A dead owner's transaction does not wait "
        "for it: the partition's next owner aborts it when its producer starts.",
    )
    admission_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Checking a job's files at acceptance (corpus, model folder) may take this "
        "long, off the event loop; past it the job is refused with ADMISSION_TIMEOUT.",
    )
    handback_flush_timeout_s: float = Field(
        5.0,
        gt=0,
        description="On a revoke, what the handed-back jobs said is committed within this; "
        "past it the rest is dropped with the partition (its commands stay uncommitted, and "
        "the next owner, whose producer fences this one, acts on them again).",
    )

    @field_validator(
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty variable (a blank ConfigMap entry, an empty Secret) means "not set".
        return None if value == "" else value

    @field_validator("kafka_security_protocol", mode="before")
    @classmethod
    def _protocol(cls, value: object) -> object:
        return security_protocol(value) if isinstance(value, str) else value

    @field_validator("kafka_sasl_mechanism", mode="before")
    @classmethod
    def _mechanism(cls, value: object) -> object:
        return sasl_mechanism(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _transactions_outlast_the_client(self) -> Settings:
        floor = int(TRANSACTION_BOUND_S * 1000) + PRODUCER_REQUEST_TIMEOUT_MS
        if self.transaction_timeout_ms <= floor:
            raise ValueError(
                f"transaction_timeout_ms must be over {floor} (the service's own bound on a "
                "transaction plus one request), or a slow broker fences the service"
            )
        return self

    @model_validator(mode="after")
    def _connection_is_consistent(self) -> Settings:
        self.connection  # noqa: B018 - raises KafkaConfigError (a ValueError) when inconsistent
        return self

    @property
    def connection(self) -> KafkaConnection:
        """How every Kafka client of the service connects (:func:`client_kwargs` makes the
        arguments)."""
        return KafkaConnection(
            bootstrap_servers=self.bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
            ssl_check_hostname=self.kafka_ssl_check_hostname,
        )

    @property
    def transactional_id(self) -> str:
        """The producer's transactional id. Without a stable instance id a restart cannot
        fence its predecessor; the pid keeps two instances on one host apart."""
        instance = self.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        return f"{self.group_id}-{instance}"

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

    @field_validator("worker_preload")
    @classmethod
    def _known_backends(cls, value: str) -> str:
        unknown = {n.strip() for n in value.split(",") if n.strip()} - set(get_args(BackendName))
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)}; known: {get_args(BackendName)}")
        return value

    @model_validator(mode="after")
    def _tenants_are_valid(self) -> Settings:
        # A tenant named after another topic (``dlq`` beside ``trainer.jobs.dlq``) would
        # write into it; the Tenancy itself refuses a malformed name.
        others = {self.events_topic, self.dead_letter_topic, self.state_topic, self.logs_topic}
        clash = sorted(others.intersection(self.tenancy.topics()))
        if clash:
            raise ValueError(f"a tenant's commands topic would be another topic: {clash}")
        return self

    @property
    def tenancy(self) -> Tenancy:
        """The tenants served (none configured: the default tenant alone)."""
        names = tuple(dict.fromkeys(n.strip() for n in self.tenants.split(",") if n.strip()))
        return Tenancy(self.commands_topic, names, self.admin_tenant or None)

    @property
    def preload_backends(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.worker_preload.split(",") if name.strip())

    @property
    def torch_threads(self) -> int:
        cores = os.cpu_count() or 1
        return self.threads_per_worker or max(1, cores // self.workers)
