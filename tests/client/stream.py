"""Tiny fake event streams, and a plain producer to put them on fresh topics of the real
broker: what the service publishes, without the service."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from model_trainer_client.decode import QueuedNotice, Update
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    DownloadEventV1,
    EventBase,
    FailedEventV1,
    JobStateV1,
    JobStatus,
    ModelTrainerErrorCode,
    ProgressEventV1,
    ce_headers,
    encode,
)
from pydantic import BaseModel

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Job:
    """Builds one job's events with consecutive ``seq`` and times a second apart."""

    job_id: str
    user_id: int = 7
    labels: dict[str, str] = field(default_factory=lambda: {"team": "nlp"})
    attempt: int = 1
    total_steps: int = 10
    seq: int = 0
    t0: datetime = T0
    loss_at: Callable[[int], float] = lambda step: 4.0 - 0.2 * step
    lr_at: Callable[[int, int], float] = lambda step, total: 6e-4 * (1 - step / (2 * total))

    def _envelope(self) -> dict[str, object]:
        envelope: dict[str, object] = {
            "job_id": self.job_id,
            "user_id": self.user_id,
            "labels": dict(self.labels),
            "seq": self.seq,
            "attempt": self.attempt,
            "ts": self.t0 + timedelta(seconds=self.seq),
        }
        self.seq += 1
        return envelope

    def queued(self, position: int = 0) -> QueuedNotice:
        return QueuedNotice.model_validate(
            {**self._envelope(), "position": position, "queue": "jobs-0", "reason": "busy"}
        )

    def config(self, start_step: int = 0) -> ConfigEventV1:
        return ConfigEventV1.model_validate(
            {
                **self._envelope(),
                "backend": "gpt2",
                "model_family": "gpt2",
                "model_size": "0.80M",
                "num_parameters": 800_000,
                "tokenizer": "char",
                "vocab_size": 65,
                "train_tokens": 100_000,
                "val_tokens": 10_000,
                "test_tokens": 5_000,
                "total_steps": self.total_steps,
                "total_epochs": 1,
                "start_step": start_step,
                "device": "cpu",
                "precision": "fp32",
                "optimal_threads": 2,
                "cpu_cores": 2,
                "memory_gb": 24.0,
                "batch_size": 8,
                "learning_rate": 6e-4,
                "queue": "jobs-0",
            }
        )

    def download(self, done: int = 3 << 20) -> DownloadEventV1:
        return DownloadEventV1.model_validate(
            {
                **self._envelope(),
                "url": "s3://corpora/books/",
                "bytes_done": done,
                "bytes_total": 8 << 20,
                "files_done": 1,
                "files_total": 4,
                "elapsed_s": 2.0,
            }
        )

    def progress(self, step: int, *, val: bool = False) -> ProgressEventV1:
        loss = self.loss_at(step)
        return ProgressEventV1.model_validate(
            {
                **self._envelope(),
                "epoch": 0,
                "total_epochs": 1,
                "step": step,
                "total_steps": self.total_steps,
                "train_loss": loss,
                "train_ppl": 2.718281828**loss,
                "grad_norm": 1.0 + step / 10,
                "learning_rate": self.lr_at(step, self.total_steps),
                "samples_per_sec": 100.0,
                "tokens_per_sec": 1000.0 + 10 * step,
                "elapsed_s": float(step),
                "eta_s": float(self.total_steps - step),
                "val_loss": loss + 0.1 if val else None,
                "val_ppl": 2.718281828 ** (loss + 0.1) if val else None,
            }
        )

    def completed(self) -> CompletedEventV1:
        return CompletedEventV1.model_validate(
            {
                **self._envelope(),
                "test_loss": 2.5,
                "test_ppl": 12.18,
                "best_val_loss": 2.4,
                "steps": self.total_steps,
                "duration_s": 12.5,
                "artifact_path": f"/artifacts/{self.job_id}",
                "manifest_digest": "0" * 64,
            }
        )

    def failed(
        self,
        code: ModelTrainerErrorCode = ModelTrainerErrorCode.CORPUS_NOT_FOUND,
        *,
        rejected: bool = False,
    ) -> FailedEventV1:
        envelope = self._envelope()
        if rejected:
            self.seq -= 1  # the service's rejections do not advance a job's seq
        return FailedEventV1.model_validate(
            {
                **envelope,
                "code": code.value,
                "message": f"{code.value.lower()} happened",
                "retryable": False,
                "http_status": 422,
                "stage": "prepare",
                "details": {"command_rejected": True} if rejected else {},
            }
        )

    def run(self, steps: int = 10, *, every: int = 2) -> list[Update]:
        """queued, config, a progress event every ``every`` steps (val each 4th), completed."""
        self.total_steps = steps
        events: list[Update] = [self.queued(), self.config()]
        events += [self.progress(s, val=s % 4 == 0) for s in range(every, steps + 1, every)]
        events.append(self.completed())
        return events

    def state(self, status: JobStatus, **extra: object) -> JobStateV1:
        return JobStateV1.model_validate(
            {
                "job_id": self.job_id,
                "user_id": self.user_id,
                "labels": dict(self.labels),
                "status": status,
                "request_digest": "d" * 64,
                "attempt": self.attempt,
                "last_seq": self.seq - 1,
                "submitted_at": self.t0,
                "updated_at": self.t0 + timedelta(seconds=self.seq),
                **extra,
            }
        )


def unknown_event(job_id: str, seq: int) -> bytes:
    """An event of a type this client does not know (a newer service's)."""
    return (
        f'{{"type":"trainer.metrics.future.v9","job_id":"{job_id}","user_id":7,'
        f'"seq":{seq},"ts":"2030-01-01T12:00:00Z","novel":true}}'
    ).encode()


@dataclass
class Topics:
    """Fresh topic names on the shared broker, for one test."""

    bootstrap: str
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def commands(self) -> str:
        return f"c-jobs-{self.uid}"

    @property
    def events(self) -> str:
        return f"c-metrics-{self.uid}"

    @property
    def state(self) -> str:
        return f"c-state-{self.uid}"

    @property
    def logs(self) -> str:
        return f"c-logs-{self.uid}"

    def env(self) -> dict[str, str]:
        return {
            "MODEL_TRAINER_BOOTSTRAP_SERVERS": self.bootstrap,
            "MODEL_TRAINER_COMMANDS_TOPIC": self.commands,
            "MODEL_TRAINER_EVENTS_TOPIC": self.events,
            "MODEL_TRAINER_STATE_TOPIC": self.state,
            "MODEL_TRAINER_LOGS_TOPIC": self.logs,
        }

    async def create(self, partitions: int = 3) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(self.commands, partitions, 1, None, None),
                    NewTopic(self.events, partitions, 1, None, None),
                    NewTopic(self.state, partitions, 1, None, {"cleanup.policy": "compact"}),
                    NewTopic(self.logs, partitions, 1, None, None),
                ]
            )
        finally:
            await admin.close()


class Publisher:
    """A plain producer: each record keyed by its job id, as the service keys them."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, topic: str, item: BaseModel | tuple[str, bytes]) -> int:
        """Publish an event, a state record or ``(job_id, raw bytes)``; return its partition."""
        if isinstance(item, tuple):
            key, value, headers = item[0], item[1], []
        elif isinstance(item, EventBase):
            key, value, headers = item.job_id, encode(item), ce_headers(item)
        elif isinstance(item, JobStateV1):
            key, value, headers = item.job_id, encode(item), []
        else:
            raise TypeError(type(item))
        meta = await self._producer.send_and_wait(topic, value, key=key.encode(), headers=headers)
        return int(meta.partition)

    async def send_all(self, topic: str, items: Sequence[EventBase | JobStateV1]) -> None:
        for item in items:
            await self.send(topic, item)
