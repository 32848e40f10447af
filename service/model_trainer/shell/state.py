"""The job-state topic (compacted, keyed by ``job_id``), read back into the job book.

Each instance reads the whole topic at start and keeps following it, so whichever instance
owns a commands partition knows every job's status, runs, failures and last published
``seq``. The book writes the records, in the same transactions as the events they describe:
with every transition, but for a running job's progress at most every ``state_every_s``. So a
new owner of a running job reads its events since its state record (:func:`published_seqs`)
before it resumes the job, and the job's seq goes on with no gap and no reuse.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from model_trainer_client.kafka import (
    assign_whole_topic,
    committed_reader,
    partition_for_key,
    to_record,
    topic_partitions,
)
from model_trainer_client.settings import KafkaConnection
from model_trainer_contracts import JobStateV1
from pydantic import ValidationError

from model_trainer.settings import Settings

log = structlog.get_logger(__name__)

# Events are stamped by the producer's clock, the state record by the book's, on one host;
# the margin covers a clock step back between the two.
CLOCK_MARGIN_S = 60.0


class StateReader:
    """Hands every state record on the topic to ``on_state``, from the start, then live."""

    def __init__(
        self,
        settings: Settings,
        on_state: Callable[[JobStateV1], None],
        on_tombstone: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._on_state = on_state
        self._on_tombstone = on_tombstone
        self._consumer: AIOKafkaConsumer | None = None
        self.records = 0

    async def start(self) -> float:
        """Replay the topic to its current end; returns the seconds it took."""
        settings = self._settings
        started = asyncio.get_running_loop().time()
        self._consumer = committed_reader(settings.connection)
        await self._consumer.start()
        if not await assign_whole_topic(self._consumer, settings.connection, settings.state_topic):
            raise RuntimeError(
                f"state topic {settings.state_topic!r} does not exist: create it "
                "(compacted) or set MODEL_TRAINER_CREATE_TOPICS=true"
            )
        await self.catch_up()
        took = asyncio.get_running_loop().time() - started
        log.info("job states replayed", records=self.records, seconds=round(took, 3))
        return took

    async def catch_up(self) -> None:
        """Return once every state record committed before this call has been read."""
        consumer = self._consumer
        if consumer is None:
            return
        tps: list[TopicPartition] = list(consumer.assignment())
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            await self._read_once(consumer)

    async def _read_once(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=200)
        for messages in batches.values():
            for message in messages:
                record = to_record(message)
                if not record.value:
                    if record.key:
                        self._on_tombstone(record.key.decode(errors="replace"))
                    continue
                try:
                    state = JobStateV1.model_validate_json(record.value)
                except ValidationError:
                    log.warning("unreadable state record", offset=record.offset)
                    continue
                self.records += 1
                self._on_state(state)

    async def follow(self) -> None:
        """Keep reading (other instances' records); runs until cancelled."""
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                await self._read_once(consumer)
            except Exception as exc:  # keep following through broker restarts
                log.warning("state topic read failed; retrying", error=str(exc))
                await asyncio.sleep(1.0)

    async def published_seqs(self, since: Mapping[str, float]) -> dict[str, int]:
        """See :func:`published_seqs`: for the service's events topic."""
        settings = self._settings
        return await published_seqs(settings.connection, settings.events_topic, since)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


async def published_seqs(
    connection: KafkaConnection, topic: str, since: Mapping[str, float]
) -> dict[str, int]:
    """The highest committed ``seq`` on the events topic of each job in ``since`` (job id to
    the time of its state record), reading its partition from that time on."""
    if not since:
        return {}
    count = len(await topic_partitions(connection, topic))
    if count == 0:
        return {}
    start: dict[TopicPartition, float] = {}
    for job_id, at in since.items():
        tp = TopicPartition(topic, partition_for_key(job_id.encode(), count))
        start[tp] = min(at, start.get(tp, at))
    consumer = committed_reader(connection)
    await consumer.start()
    try:
        consumer.assign(list(start))
        ends: dict[TopicPartition, int] = await consumer.end_offsets(list(start))
        times = {tp: int((at - CLOCK_MARGIN_S) * 1000) for tp, at in start.items()}
        found = await consumer.offsets_for_times(times)
        for tp in start:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        seqs: dict[str, int] = {}
        while [tp for tp in start if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for message in messages:
                    record = to_record(message)
                    _note_seq(record.key, record.value, since, seqs)
        return seqs
    finally:
        await consumer.stop()


def _note_seq(
    key: bytes | None, value: bytes, wanted: Mapping[str, float], seqs: dict[str, int]
) -> None:
    job_id = key.decode(errors="replace") if key else ""
    if job_id not in wanted:
        return
    # Only the envelope's seq, not decode_event: an event type newer than this reader still
    # holds a seq the job must not reuse.
    try:
        event: object = json.loads(value)
    except ValueError:
        return
    seq = event.get("seq") if isinstance(event, dict) else None
    if isinstance(seq, int) and seq > seqs.get(job_id, -1):
        seqs[job_id] = seq
