"""A job's own log lines, from its worker to the logs topic (best-effort).

In the worker, :class:`LogForwarder` is a structlog processor: every record bound to a job
(``job_id`` and ``attempt``, the worker binds both for the run) goes up the worker's pipe as
a :class:`~.protocol.JobLog`, as well as to stderr. In the service, :class:`LogShipper`
publishes them keyed by job id with a plain idempotent producer, outside the fencing
transactions: a bounded buffer that drops the oldest line (counted) when the broker is slow or
away, so a log line never waits on Kafka, never holds up training nor the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import traceback
from collections import deque
from collections.abc import Callable, MutableMapping
from types import TracebackType

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from model_trainer_client.settings import client_kwargs
from model_trainer_contracts import LogLineV1, encode
from model_trainer_contracts.logs import MAX_EXCEPTION_CHARS, MAX_MESSAGE_CHARS
from pydantic import JsonValue, ValidationError

from model_trainer.metrics import LOG_LINES_DROPPED
from model_trainer.pool.protocol import JobLog
from model_trainer.settings import Settings

log = structlog.get_logger(__name__)
_SKIPPED = frozenset(
    {"event", "job_id", "attempt", "level", "timestamp", "exception", "exc_info", "worker_pid"}
)
_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _json(value: object) -> JsonValue:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)[:MAX_MESSAGE_CHARS]


def _traceback(event: MutableMapping[str, object]) -> str | None:
    """The record's traceback: structlog's formatted one, or a stdlib record's exc_info."""
    text = event.get("exception")
    if isinstance(text, str):
        return text[-MAX_EXCEPTION_CHARS:]
    info = event.get("exc_info")
    if isinstance(info, tuple) and len(info) == 3 and isinstance(info[1], BaseException):
        return "".join(traceback.format_exception(info[1]))[-MAX_EXCEPTION_CHARS:]
    return None


class LogForwarder:
    """structlog processor (the worker's): sends each job-bound record up the pipe too."""

    def __init__(self, send: Callable[[JobLog], None]) -> None:
        self._send = send
        self._lines: dict[tuple[str, int], int] = {}

    def __call__(
        self, _logger: object, method: str, event: MutableMapping[str, object]
    ) -> MutableMapping[str, object]:
        job_id, attempt = event.get("job_id"), event.get("attempt")
        if isinstance(job_id, str) and isinstance(attempt, int):
            # best-effort: a line that cannot be sent is only on stderr
            with contextlib.suppress(ValidationError, OSError, ValueError):
                self._forward(job_id, attempt, method, event)
        return event

    def _forward(
        self, job_id: str, attempt: int, method: str, event: MutableMapping[str, object]
    ) -> None:
        key = (job_id, attempt)
        if key not in self._lines:
            self._lines = {key: 0}  # one run at a time: an earlier run's count goes
        number = self._lines[key]
        self._lines[key] = number + 1
        record = event.get("_record")
        level = str(event.get("level", method)).lower()
        line = LogLineV1(
            job_id=job_id,
            attempt=max(1, attempt),
            line=number,
            level=level if level in _LEVELS else "info",
            logger=str(getattr(record, "name", "model_trainer")),
            message=str(event.get("event", ""))[:MAX_MESSAGE_CHARS],
            fields={
                name: _json(value)
                for name, value in event.items()
                if name not in _SKIPPED and not name.startswith("_")
            },
            exception=_traceback(event),
        )
        self._send(JobLog(job_id, attempt, encode(line)))


class LogShipper:
    """The service's side: :meth:`add` (any thread) buffers, :meth:`run` publishes."""

    POLL_S = 0.1
    BATCH = 500

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._buffer: deque[JobLog] = deque()
        self._dropped: dict[str, int] = {}  # per job, since its last published line
        self.dropped = 0
        self.published = 0
        self._producer: AIOKafkaProducer | None = None

    def add(self, line: JobLog) -> None:
        """Buffer a line; a full buffer drops its oldest (thread-safe, never waits)."""
        with self._lock:
            if len(self._buffer) >= self._settings.logs_buffer:
                self._drop(self._buffer.popleft())
            self._buffer.append(line)

    def _drop(self, line: JobLog) -> None:
        self._dropped[line.job_id] = self._dropped.get(line.job_id, 0) + 1
        self.dropped += 1
        LOG_LINES_DROPPED.inc()

    def take(self) -> list[tuple[JobLog, int]]:
        """Up to a batch of lines, each with the count of its job's lines dropped before it."""
        with self._lock:
            batch: list[tuple[JobLog, int]] = []
            while self._buffer and len(batch) < self.BATCH:
                line = self._buffer.popleft()
                batch.append((line, self._dropped.pop(line.job_id, 0)))
            return batch

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def run(self) -> None:
        """Publish buffered lines for ever; while the broker is away they wait (bounded)."""
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
                break
            except (KafkaError, OSError):
                await producer.stop()
                await asyncio.sleep(1.0)
        self._producer = producer
        away = False
        while True:
            batch = self.take()
            if not batch:
                await asyncio.sleep(self.POLL_S)
                continue
            try:
                await self._publish(producer, batch)
                if away:
                    log.info("job log lines published again")
                    away = False
            except (KafkaError, OSError) as exc:
                if not away:
                    log.warning("job log lines not published", error=repr(exc))
                    away = True
                for line, _ in batch:
                    self._drop(line)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_kwargs(self._settings.connection),
            enable_idempotence=True,  # a retried batch is not written twice by the broker
            linger_ms=20,
            request_timeout_ms=15_000,
        )

    async def _publish(self, producer: AIOKafkaProducer, batch: list[tuple[JobLog, int]]) -> None:
        topic = self._settings.logs_topic
        sent = []
        for line, dropped in batch:
            data = line.data
            if dropped:
                model = LogLineV1.model_validate_json(data)
                data = encode(model.model_copy(update={"dropped": dropped}))
            sent.append(await producer.send(topic, data, key=line.job_id.encode()))
        await asyncio.gather(*sent)
        self.published += len(batch)

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Publish what is left, within ``timeout_s``, then close."""
        producer = self._producer
        if producer is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                while batch := self.take():
                    await self._publish(producer, batch)
        except (TimeoutError, KafkaError, OSError):
            pass
        finally:
            with contextlib.suppress(TimeoutError, KafkaError, OSError):
                async with asyncio.timeout(timeout_s):
                    await producer.stop()
