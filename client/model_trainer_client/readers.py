"""Readers of the service's topics that need no service: one job's records from the partition
that holds it, every job's state, and a live tail of everything.

All of them read committed records only, outside any consumer group, and skip what they
cannot read (:mod:`.decode`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from aiokafka import TopicPartition
from model_trainer_contracts import JobStateV1

from . import outage
from .decode import Update, decode_state, decode_update
from .kafka import (
    Record,
    committed_reader,
    partition_for_key,
    partitions,
    to_record,
    topic_partitions,
)
from .settings import ClientSettings, KafkaConnection
from .startstop import StartStop

POLL_MS = 500


class TopicReader(StartStop):
    """A committed, group-less consumer of chosen partitions, that can tell when it has read
    everything that was there when :meth:`mark_ends` was called."""

    def __init__(self, connection: KafkaConnection | str) -> None:
        self.connection = connection
        self.consumer = committed_reader(connection)
        self._ends: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await self.consumer.start()
        outage.arm()

    async def stop(self) -> None:
        await self.consumer.stop()

    def assignment(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    async def add(self, starts: Mapping[TopicPartition, int | None]) -> None:
        """Read these partitions too, each from an offset (``None``: its beginning); the
        partitions already assigned keep their positions."""
        kept = {tp: await self.consumer.position(tp) for tp in self.assignment()}
        self.consumer.assign([*kept, *(tp for tp in starts if tp not in kept)])
        for tp, offset in kept.items():
            self.consumer.seek(tp, offset)
        for tp, start in starts.items():
            if tp in kept:
                continue
            if start is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, start)

    async def add_topic(self, topic: str, wait_s: float = 0.5) -> list[TopicPartition]:
        """Read every partition of ``topic`` too, from its beginning, once the topic exists:
        the service creates its topics at start, so this asks again every ``wait_s``."""
        while True:
            tps = partitions(topic, await topic_partitions(self.connection, topic))
            if tps:
                await self.add(dict.fromkeys(tps))
                return tps
            await asyncio.sleep(wait_s)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(tps)
        return {tp: int(offset) for tp, offset in ends.items()}

    async def offsets_at(self, times_ms: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Per partition, the first offset written at or after the time (else its end)."""
        if not times_ms:
            return {}
        found = await self.consumer.offsets_for_times(dict(times_ms))
        ends = await self.end_offsets(list(times_ms))
        offsets: dict[TopicPartition, int] = {}
        for tp in times_ms:
            hit = found.get(tp)
            offset = getattr(hit, "offset", None)
            offsets[tp] = int(offset) if isinstance(offset, int) else ends[tp]
        return offsets

    async def mark_ends(self) -> None:
        """Remember where each assigned partition ends now (see :meth:`caught_up`)."""
        self._ends = await self.end_offsets(list(self.assignment()))

    async def caught_up(self) -> bool:
        for tp, end in self._ends.items():
            if await self.consumer.position(tp) < end:
                return False
        return True

    async def poll(self, timeout_ms: int = POLL_MS) -> list[Record]:
        if not self.assignment():
            await asyncio.sleep(timeout_ms / 1000)
            return []
        batches = await self.consumer.getmany(timeout_ms=timeout_ms)
        outage.polled()
        return [to_record(message) for messages in batches.values() for message in messages]

    async def read_to_end(self) -> list[Record]:
        """Everything from the current positions to the ends as of this call."""
        await self.mark_ends()
        records: list[Record] = []
        while not await self.caught_up():
            records.extend(await self.poll())
        return records


async def job_partition(connection: KafkaConnection | str, topic: str, job_id: str) -> int | None:
    """The partition of ``topic`` that holds ``job_id``'s records (``None``: no such topic),
    as Kafka's default partitioner places a record keyed by the job id."""
    ids = await topic_partitions(connection, topic)
    if not ids:
        return None
    return ids[partition_for_key(job_id.encode(), len(ids))]


class JobFollower(StartStop):
    """One job's events: only the partition of the events topic that holds the job, read
    from its beginning and filtered by key. :meth:`history` is what was there on entry;
    :meth:`updates` goes on from there, forever."""

    def __init__(self, settings: ClientSettings, job_id: str) -> None:
        self.settings = settings
        self.job_id = job_id
        self._key = job_id.encode()
        self._reader = TopicReader(settings.connection)
        self.partition: int | None = None

    async def start(self) -> None:
        await self._reader.start()
        await self._locate()

    async def stop(self) -> None:
        await self._reader.stop()

    async def _locate(self) -> bool:
        topic = self.settings.events_topic
        partition = await job_partition(self.settings.connection, topic, self.job_id)
        if partition is None:
            return False
        self.partition = partition
        await self._reader.add({TopicPartition(topic, partition): None})
        return True

    def assigned(self) -> list[int]:
        """The partitions it reads (the job's one, once the topic exists)."""
        return sorted(tp.partition for tp in self._reader.assignment())

    def _mine(self, record: Record) -> Update | None:
        if record.key != self._key:
            return None
        update = decode_update(record.value)
        return update if update is not None and update.job_id == self.job_id else None

    async def history(self) -> list[Update]:
        """The job's events published before entry (none when the topic does not exist yet)."""
        if self.partition is None:
            return []
        records = await self._reader.read_to_end()
        return [update for record in records if (update := self._mine(record)) is not None]

    async def poll(self) -> list[Update]:
        """The job's events read within one poll, after :meth:`history` (none while the
        topic does not exist)."""
        if self.partition is None and not await self._locate():
            await asyncio.sleep(POLL_MS / 1000)
            return []
        records = await self._reader.poll()
        return [update for record in records if (update := self._mine(record)) is not None]

    async def updates(self) -> AsyncIterator[Update]:
        """The job's events after :meth:`history`, as they come (waits for the topic)."""
        while True:
            for update in await self.poll():
                yield update


async def read_job_state(settings: ClientSettings, job_id: str) -> JobStateV1 | None:
    """The job's record on the compacted state topic: only the partition that holds it."""
    topic = settings.state_topic
    partition = await job_partition(settings.connection, topic, job_id)
    if partition is None:
        return None
    key = job_id.encode()
    state: JobStateV1 | None = None
    async with TopicReader(settings.connection) as reader:
        await reader.add({TopicPartition(topic, partition): None})
        for record in await reader.read_to_end():
            if record.key == key:
                found = decode_state(record.value)
                state = found if found is None or found.job_id == job_id else state
    return state


async def read_states(settings: ClientSettings) -> dict[str, JobStateV1]:
    """Every job's latest state record (the whole compacted state topic, to its end)."""
    topic = settings.state_topic
    ids = await topic_partitions(settings.connection, topic)
    states: dict[str, JobStateV1] = {}
    if not ids:
        return states
    async with TopicReader(settings.connection) as reader:
        await reader.add({TopicPartition(topic, partition): None for partition in ids})
        for record in await reader.read_to_end():
            state = decode_state(record.value)
            if state is not None:
                states[state.job_id] = state
            elif not record.value and record.key is not None:  # tombstone: the job is gone
                states.pop(record.key.decode("utf-8", "replace"), None)
    return states


async def read_events_of(
    settings: ClientSettings, states: list[JobStateV1], backlog_ms: int = 60_000
) -> list[Update]:
    """The events of these jobs (``jobs``' progress, loss and duration): each partition
    holding one read from shortly before the oldest such job was submitted, to its end."""
    topic = settings.events_topic
    ids = await topic_partitions(settings.connection, topic)
    if not ids or not states:
        return []
    since: dict[TopicPartition, int] = {}
    for state in states:
        tp = TopicPartition(topic, ids[partition_for_key(state.job_id.encode(), len(ids))])
        at = int(state.submitted_at.timestamp() * 1000) - backlog_ms
        since[tp] = min(at, since.get(tp, at))
    wanted = {state.job_id.encode() for state in states}
    async with TopicReader(settings.connection) as reader:
        starts: dict[TopicPartition, int | None] = dict(await reader.offsets_at(since))
        await reader.add(starts)
        records = await reader.read_to_end()
    return [
        update
        for record in records
        if record.key in wanted and (update := decode_update(record.value)) is not None
    ]


class LiveTail(StartStop):
    """Every job's events and state records as they come, for ``watch``, the dashboard and
    the TensorBoard export. The state topic is read from its beginning; the events topic from
    its beginning (``events_since_ms=None``) or, per partition, from a time (partitions left
    out start at their end). Topics that do not exist yet are picked up when they appear.
    ``with_state=False`` reads the events topic alone."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        events_since_ms: Mapping[int, int] | None = None,
        with_state: bool = True,
    ) -> None:
        self.settings = settings
        self._since = events_since_ms
        self._reader = TopicReader(settings.connection)
        self._topics = [settings.events_topic]
        if with_state:
            self._topics.append(settings.state_topic)
        self._found: set[str] = set()
        self._ends: dict[TopicPartition, int] = {}
        self._next_look = 0.0

    async def start(self) -> None:
        await self._reader.start()
        await self._look()
        self._ends = await self._reader.end_offsets(list(self._reader.assignment()))

    async def stop(self) -> None:
        await self._reader.stop()

    @property
    def events_found(self) -> bool:
        return self.settings.events_topic in self._found

    async def _look(self) -> None:
        """Assign the partitions of topics that appeared since the last look."""
        self._next_look = asyncio.get_running_loop().time() + 2.0
        starts: dict[TopicPartition, int | None] = {}
        for topic in self._topics:
            if topic in self._found:
                continue
            ids = await topic_partitions(self.settings.connection, topic)
            if not ids:
                continue
            self._found.add(topic)
            tps = [TopicPartition(topic, partition) for partition in ids]
            if topic == self.settings.state_topic or self._since is None:
                starts.update(dict.fromkeys(tps))
                continue
            since = {tp: self._since[tp.partition] for tp in tps if tp.partition in self._since}
            ends = await self._reader.end_offsets(tps)
            starts.update(ends)
            starts.update(await self._reader.offsets_at(since))
        if starts:
            await self._reader.add(starts)

    async def caught_up(self) -> bool:
        """Whether everything there on entry has been read (topics missing then: nothing)."""
        for tp, end in self._ends.items():
            if await self._reader.consumer.position(tp) < end:
                return False
        return True

    async def poll(self) -> list[Update | JobStateV1]:
        missing = len(self._found) < len(self._topics)
        if missing and asyncio.get_running_loop().time() >= self._next_look:
            await self._look()
        read: list[Update | JobStateV1] = []
        for record in await self._reader.poll():
            item: Update | JobStateV1 | None
            if record.topic == self.settings.state_topic:
                item = decode_state(record.value)
            else:
                item = decode_update(record.value)
            if item is not None:
                read.append(item)
        return read
