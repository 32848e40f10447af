"""The client's committed reader of whole topics (what the soak bench builds on) against the
real broker: it waits for a topic the service has not created yet, then reads every
partition from its beginning."""

from __future__ import annotations

import asyncio

import pytest
from model_trainer_client.readers import TopicReader

from .stream import Publisher, Topics

pytestmark = pytest.mark.kafka


async def test_a_reader_waits_for_its_topic_then_reads_every_partition_from_the_start(
    kafka_bootstrap: str,
) -> None:
    topics = Topics(kafka_bootstrap)
    async with TopicReader(kafka_bootstrap) as reader:
        waiting = asyncio.create_task(reader.add_topic(topics.events, wait_s=0.1))
        await asyncio.sleep(1.0)
        assert not waiting.done(), "the topic does not exist yet"
        await topics.create(partitions=3)
        sent = [(f"job-{i}", f"record-{i}".encode()) for i in range(12)]
        async with Publisher(kafka_bootstrap) as pub:
            placed = [await pub.send(topics.events, item) for item in sent]
        assert len(set(placed)) > 1, "the records should spread over partitions"
        tps = await asyncio.wait_for(waiting, timeout=30)
        assert [(tp.topic, tp.partition) for tp in tps] == [(topics.events, p) for p in range(3)]
        records = await reader.read_to_end()
    read = sorted((r.partition, r.offset, r.key, r.value) for r in records)
    by_partition = [
        [(key.encode(), value) for (key, value), p in zip(sent, placed, strict=True) if p == part]
        for part in range(3)
    ]
    assert [[(key, value) for p, _, key, value in read if p == part] for part in range(3)] == (
        by_partition
    )
