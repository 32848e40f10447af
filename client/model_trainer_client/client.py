"""A small client for the service's topics: send commands, watch events as they come.

Used by the CLI, the tests and the benchmarks. To read one job's events, history included,
see :class:`~model_trainer_client.readers.JobFollower`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    Event,
    FailedEventV1,
    ModelTrainerError,
    SubmitJobV1,
    ce_headers,
    decode_event,
    encode,
)

from . import outage
from .kafka import assign_whole_topic, committed_reader, to_record
from .settings import KafkaConnection, client_kwargs
from .startstop import StartStop


class CommandSender(StartStop):
    """An idempotent producer for the commands topic; messages keyed by ``job_id``."""

    def __init__(self, connection: KafkaConnection | str, commands_topic: str) -> None:
        self._topic = commands_topic
        self._producer = AIOKafkaProducer(
            **client_kwargs(connection), enable_idempotence=True, acks="all"
        )

    async def start(self) -> None:
        await self._producer.start()
        outage.arm()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, command: SubmitJobV1 | CancelJobV1) -> None:
        await self.send_raw(
            encode(command), key=command.job_id.encode(), headers=ce_headers(command)
        )

    async def send_raw(
        self, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Send bytes as they are (for tests of malformed input)."""
        await self._producer.send_and_wait(self._topic, value, key=key, headers=headers or [])


class EventWatcher(StartStop):
    """Reads committed events from the events topic, starting at its end when entered."""

    def __init__(self, connection: KafkaConnection | str, events_topic: str) -> None:
        self._connection = connection
        self._topic = events_topic
        self._consumer = committed_reader(connection)
        self.seen: list[Event] = []

    async def start(self) -> None:
        await self._consumer.start()
        while True:  # the service creates its topics at start; wait for them
            if await assign_whole_topic(
                self._consumer, self._connection, self._topic, from_end=True
            ):
                return
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def rewind(self) -> None:
        """Read the topic again from its beginning (``seen`` is cleared)."""
        self.seen.clear()
        await self._consumer.seek_to_beginning(*self._consumer.assignment())

    async def poll(self) -> list[Event]:
        """Read what arrived within half a second; every event read is kept in ``seen``."""
        fresh: list[Event] = []
        batches = await self._consumer.getmany(timeout_ms=500)
        for messages in batches.values():
            for message in messages:
                try:
                    fresh.append(decode_event(to_record(message).value))
                except ModelTrainerError:
                    continue
        self.seen.extend(fresh)
        return fresh

    async def events(self, job_ids: set[str] | None = None) -> AsyncIterator[Event]:
        """Every event read from now on (of ``job_ids``, when given), forever."""
        while True:
            for event in await self.poll():
                if job_ids is None or event.job_id in job_ids:
                    yield event

    async def until_terminal(self, job_id: str, timeout_s: float) -> list[Event]:
        """The job's events, since entry, up to its terminal event or its command's rejection.

        Events of other jobs read meanwhile stay in :attr:`seen` for later calls.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                mine: list[Event] = []
                for event in self.seen:
                    if event.job_id == job_id:
                        mine.append(event)
                        if isinstance(event, CompletedEventV1 | FailedEventV1):
                            return mine
                await self.poll()


def is_terminal(event: Event) -> bool:
    """True for the event that ends a job (a command rejection is not one)."""
    if isinstance(event, CompletedEventV1):
        return True
    return isinstance(event, FailedEventV1) and event.details.get("command_rejected") is not True
