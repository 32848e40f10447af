"""The publisher against a real broker: a commit whose answer is lost is looked up, never
blindly sent again (that put an event, seq and all, on the topic twice: the coordinator had
the transaction prepared, and the producer that replaced ours completed its commit)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from model_trainer.settings import Settings
from model_trainer.shell.publisher import Landing, Publisher, landed
from model_trainer.shell.wire import Outgoing
from model_trainer_client.kafka import assign_whole_topic, committed_reader, to_record

from tests.figures import Figure

pytestmark = pytest.mark.kafka


class _LosingPublisher(Publisher):
    """A publisher on real producers, whose first commit lands on the broker but whose
    answer never comes back (as when the broker goes away between writing the commit and
    answering)."""

    lost = 0

    def _new_producer(self) -> AIOKafkaProducer:
        fresh: AIOKafkaProducer = super()._new_producer()
        commit = fresh.commit_transaction

        async def commit_then_lose_the_answer() -> None:
            await commit()
            if self.lost == 0:
                self.lost += 1
                raise KafkaConnectionError("the commit's answer was lost")

        fresh.commit_transaction = commit_then_lose_the_answer
        return fresh


def _settings(bootstrap: str) -> Settings:
    uid = uuid.uuid4().hex[:8]
    return Settings(bootstrap_servers=bootstrap, group_id=f"group-{uid}", events_topic=f"ev-{uid}")


async def _read_all(settings: Settings, topic: str) -> list[bytes]:
    consumer = committed_reader(settings.connection)
    await consumer.start()
    try:
        tps = await assign_whole_topic(consumer, settings.connection, topic)
        ends = await consumer.end_offsets(tps)
        values: list[bytes] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                values.extend(to_record(message).value for message in messages)
        return values
    finally:
        await consumer.stop()


async def test_a_commit_whose_answer_is_lost_is_published_once(
    kafka_bootstrap: str, figure: Figure
) -> None:
    settings = _settings(kafka_bootstrap)
    topic = settings.events_topic
    publisher = _LosingPublisher(settings, f"{settings.group_id}-publisher-test")
    await publisher.start()
    runner = asyncio.create_task(publisher.run())
    try:
        batches = [[Outgoing(topic, b"job", f"e{i}".encode(), [], partition=0)] for i in range(3)]
        for batch in batches:
            await asyncio.wait_for(publisher.publish(batch), timeout=120)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await publisher.stop()
    assert publisher.lost == 1, "the lost answer was never injected"
    values = await _read_all(settings, topic)
    assert values == [b"e0", b"e1", b"e2"]
    figure(f"commit answer lost once: {len(values)} records on the topic, each once")


async def test_landed_tells_a_committed_record_from_an_aborted_one(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap)
    topic = settings.events_topic
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=topic)
    await producer.start()
    try:
        places: list[Landing] = []
        for commit in (False, True):
            await producer.begin_transaction()
            sent = await (await producer.send(topic, b"x", partition=0))
            places.append(Landing(topic, 0, int(sent.offset)))
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()
    aborted, committed = places
    assert await landed(settings, aborted, timeout_s=30) is False
    assert await landed(settings, committed, timeout_s=30) is True
    beyond = Landing(topic, 0, committed.offset + 100)
    assert await landed(settings, beyond, timeout_s=2) is None
