"""The service's topics, created at start, are readable the moment creating them returns."""

from __future__ import annotations

import pytest
from local_service import Stack
from model_trainer.settings import Settings
from model_trainer.shell.kafka import ensure_topics
from model_trainer_client.kafka import topic_partitions

pytestmark = pytest.mark.kafka


async def test_created_topics_are_listed_when_ensure_topics_returns(stack: Stack) -> None:
    """The state reader looks its topic up right after: a creation the broker's metadata did
    not list yet once stopped a service's start ("state topic ... does not exist")."""
    settings = Settings.model_validate(stack.env())
    await ensure_topics(settings)
    names = [
        settings.commands_topic,
        settings.events_topic,
        settings.dead_letter_topic,
        settings.logs_topic,
        settings.state_topic,
    ]
    listed = [await topic_partitions(stack.bootstrap, name) for name in names]
    assert listed == [list(range(settings.topic_partitions))] * len(names)
