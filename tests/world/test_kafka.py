"""The world keeps the promises its docstring makes (the ones the shell relies on)."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, ProducerFenced
from model_trainer.book.records import TP

from .kafka import Kafka, WorldProducer

TOPIC = TP("t", 0)


async def _empty_transaction(producer: WorldProducer) -> None:
    async with producer.transaction():
        pass


def _world() -> Kafka:
    kafka = Kafka()
    kafka.create_topic("t", 1)
    return kafka


async def test_a_newer_producer_aborts_the_open_transaction_and_fences_the_older() -> None:
    kafka = _world()
    old, new = WorldProducer(kafka, "id"), WorldProducer(kafka, "id")
    await old.start()

    async def fenced_while_open() -> None:
        async with old.transaction():
            await old.send("t", b"zombie", key=b"k", partition=0)
            assert kafka.committed(TOPIC) == []  # held: the transaction is open
            await new.start()

    with pytest.raises(ProducerFenced):
        await fenced_while_open()
    async with new.transaction():
        await new.send("t", b"owner", key=b"k", partition=0)
    with pytest.raises(ProducerFenced):
        await _empty_transaction(old)
    assert [r.value for r in kafka.committed(TOPIC)] == [b"owner"]
    assert [r.offset for r in kafka.committed(TOPIC)] == [1]  # the aborted one kept offset 0


async def test_records_and_offsets_commit_together_or_not_at_all() -> None:
    kafka = _world()
    producer = WorldProducer(kafka, "id")
    await producer.start()

    async def away_before_the_commit() -> None:
        async with producer.transaction():
            await producer.send("t", b"lost", partition=0)
            await producer.send_offsets_to_transaction({TopicPartition("jobs", 0): 5}, "g")
            kafka.available = False

    with pytest.raises(KafkaConnectionError):
        await away_before_the_commit()
    kafka.available = True
    assert kafka.committed(TOPIC) == []
    assert kafka.offsets == {}
    assert kafka.stable_end(TOPIC) == 0  # left open by the outage: it holds readers back
    await producer.start()  # the id's next producer aborts it
    async with producer.transaction():
        await producer.send("t", b"kept", partition=0)
        await producer.send_offsets_to_transaction({TopicPartition("jobs", 0): 5}, "g")
    assert [r.value for r in kafka.committed(TOPIC)] == [b"kept"]
    assert kafka.offsets == {"g": {TP("jobs", 0): 5}}
