"""Events: what the service publishes on the metrics topic. Tolerant: unknown fields are ignored.

Field names follow the seed project's ``trainer.metrics.*.v1`` events where it had them, so
readers written for those keep decoding ours.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_serializer,
    model_validator,
)

from .commands import JobId, LabelKey, LabelValue
from .errors import ModelTrainerErrorCode

NonNegative = Annotated[float, Field(ge=0.0)]


def _now() -> datetime:
    return datetime.now(UTC)


def _event_id() -> str:
    return str(uuid.uuid4())


class EventBase(BaseModel):
    """Envelope fields every event carries.

    ``seq`` increases by one per event of a job, across retries and restarts, so a reader can
    order events and drop duplicates; ``attempt`` counts runs of the job (1 for the first).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    type: str = Field(description="The event type; also the CloudEvents ce_type header.")
    event_id: str = Field(
        default_factory=_event_id,
        min_length=1,
        max_length=64,
        description="Unique per event (a UUID); also the ce_id header.",
    )
    job_id: JobId = Field(description="The job; also the Kafka message key.")
    user_id: int = Field(ge=0, description="From the job's submit command.")
    ts: AwareDatetime = Field(default_factory=_now, description="RFC 3339, UTC.")
    seq: int = Field(ge=0, description="Per job, +1 per event, across attempts.")
    attempt: int = Field(1, ge=1, description="Run of the job, 1 for the first.")
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="The job's labels."
    )

    @field_serializer("ts")
    def _rfc3339_utc(self, ts: datetime) -> str:
        return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class QueuedEventV1(EventBase):
    """The job waits for a worker: published with its queued state, whenever it (re)enters the
    queue. ``attempt`` is the run it waits for; ``position`` counts the jobs ahead of it."""

    type: Literal["trainer.job.queued.v1"] = "trainer.job.queued.v1"
    position: int = Field(
        ge=0, description="Jobs ahead of it in its queue when published; 0: it runs next."
    )
    queue: str = Field(
        description="Where it waits: the commands topic and partition that own it, e.g. "
        "'trainer.jobs[2]'."
    )
    reason: str = Field(
        description="Why it is queued: 'submitted' (a new job), 'preempted' (its worker was "
        "stopped; it resumes from its checkpoint) or 'retry' (its run ended in an "
        "infrastructure failure, such as its worker dying, and runs again). "
        "A plain string, so readers keep decoding when a reason is added."
    )


class ConfigEventV1(EventBase):
    """What will actually run, resolved: published once per attempt, before the first step."""

    type: Literal["trainer.metrics.config.v1"] = "trainer.metrics.config.v1"
    backend: str = Field(
        description="Backend name (char_lstm, gpt2, ...): a plain string, so readers keep "
        "decoding when a backend is added."
    )
    model_family: str
    model_size: str = Field(description="Human-readable size, e.g. '0.80M'.")
    num_parameters: int = Field(ge=0)
    tokenizer: str
    vocab_size: int = Field(ge=1)
    train_tokens: int = Field(ge=0)
    val_tokens: int = Field(ge=0)
    test_tokens: int = Field(ge=0)
    loss_tokens: int | None = Field(
        None,
        ge=0,
        description="chat and instruction data: the training tokens that count in the loss "
        "(the rest are prompt, system or padding); null for text.",
    )
    packing_efficiency: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="chat and instruction data: the share of training window positions that "
        "hold an example's token rather than padding; null for text.",
    )
    total_steps: int = Field(ge=0)
    total_epochs: int = Field(ge=0)
    start_step: int = Field(0, ge=0, description="Step resumed from; 0 for a fresh run.")
    device: str
    precision: str
    optimal_threads: int = Field(ge=1)
    cpu_cores: int = Field(ge=1)
    memory_gb: NonNegative
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    queue: str = Field(
        description="Where the job came from: commands topic and partition, e.g. 'trainer.jobs[2]'."
    )


class ProgressEventV1(EventBase):
    """Training progress; ``val_loss``/``val_ppl`` are set when an evaluation just ran."""

    type: Literal["trainer.metrics.progress.v1"] = "trainer.metrics.progress.v1"
    epoch: int = Field(ge=0)
    total_epochs: int = Field(ge=0)
    step: int = Field(ge=0)
    total_steps: int = Field(ge=0)
    train_loss: float
    train_ppl: float
    grad_norm: NonNegative
    learning_rate: NonNegative
    samples_per_sec: NonNegative
    tokens_per_sec: NonNegative
    elapsed_s: NonNegative
    eta_s: NonNegative
    val_loss: float | None = None
    val_ppl: float | None = None
    mfu: NonNegative | None = Field(
        None,
        description="Model FLOPs utilisation since the last progress event: tokens/s x FLOPs "
        "per token (6N + 12 L H Q T) over the device's dense bf16 peak; None where the peak is "
        "unknown (CPU, unlisted GPUs).",
    )


class DownloadEventV1(EventBase):
    """A large input is being fetched from object storage (a corpus at an s3:// URL) before
    the attempt's config event: bytes done of total, published every few seconds while the
    download lasts (none for one that ends sooner), the last with ``done`` true."""

    type: Literal["trainer.metrics.download.v1"] = "trainer.metrics.download.v1"
    url: str = Field(max_length=1024, description="What is fetched: the corpus URL.")
    bytes_done: int = Field(ge=0)
    bytes_total: int = Field(ge=0, description="Every object's size, from the listing.")
    files_done: int = Field(ge=0)
    files_total: int = Field(ge=0)
    elapsed_s: NonNegative
    done: bool = Field(False, description="The download has ended: no more for this URL.")


class CompletedEventV1(EventBase):
    """The job finished and its artifact is written. Terminal."""

    type: Literal["trainer.metrics.completed.v1"] = "trainer.metrics.completed.v1"
    test_loss: float | None = None
    test_ppl: float | None = None
    best_val_loss: float | None = None
    steps: int = Field(ge=0)
    duration_s: NonNegative
    early_stopped: bool = False
    artifact_path: str
    manifest_digest: str = Field(description="sha256 of the artifact's manifest.json.")


class FailedEventV1(EventBase):
    """The job (or the command that asked for it) failed. Terminal."""

    type: Literal["trainer.job.failed.v1"] = "trainer.job.failed.v1"
    code: ModelTrainerErrorCode = Field(description="Machine-readable reason.")
    message: str = Field(description="Human-readable reason.")
    retryable: bool = Field(description="Whether resubmitting may succeed.")
    http_status: int = Field(ge=100, le=599, description="The code's HTTP equivalent.")
    stage: str = Field(
        description="Where the job was: validate, prepare, train, evaluate or save (a plain "
        "string, so readers keep decoding when a stage is added)."
    )
    details: dict[str, JsonValue] = Field(
        default_factory=dict, description="Offending fields, limits, paths."
    )

    @model_validator(mode="before")
    @classmethod
    def _tolerate_new_codes(cls, data: object) -> object:
        """A code newer than this reader reads as INTERNAL_ERROR, the original kept in
        ``details["unknown_code"]``, so adding a code does not break older readers."""
        if not isinstance(data, dict):
            return data
        code = data.get("code")
        if isinstance(code, str) and code not in ModelTrainerErrorCode.__members__:
            details = data.get("details")
            kept = details if isinstance(details, dict) else {}
            return {
                **data,
                "code": ModelTrainerErrorCode.INTERNAL_ERROR.value,
                "details": {**kept, "unknown_code": code},
            }
        return data


Event = Annotated[
    QueuedEventV1
    | ConfigEventV1
    | ProgressEventV1
    | DownloadEventV1
    | CompletedEventV1
    | FailedEventV1,
    Field(discriminator="type"),
]
TerminalEvent = CompletedEventV1 | FailedEventV1
EVENT_TYPES = frozenset(
    str(model.model_fields["type"].default)
    for model in (
        QueuedEventV1,
        ConfigEventV1,
        ProgressEventV1,
        DownloadEventV1,
        CompletedEventV1,
        FailedEventV1,
    )
)
"""The ``type`` of every event this version of the contract defines."""
