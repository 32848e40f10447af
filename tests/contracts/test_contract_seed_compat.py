"""Readers written for the seed project's ``trainer.metrics.*.v1`` events still read ours.

A seed reader is the seed's TypedDicts (``model_trainer_contracts.seed`` declares the same
fields and types) read as the seed's decoder reads them: every required field present with
its type (a float may be written as an integer; nothing is null), an optional one absent,
null (the seed's decoder skips it) or of its type. The whole event stream of a job that sets
nothing optional must pass, completed event included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, NotRequired, get_args, get_origin, get_type_hints

import pytest
from model_trainer.engine import RunContext, run_job
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    ProgressEventV1,
    SubmitJobV1,
    encode,
)
from model_trainer_contracts.events import EventBase
from model_trainer_contracts.examples import COMPLETED, CONFIG, PROGRESS
from model_trainer_contracts.seed import (
    TrainerCompletedMetricsV1,
    TrainerConfigV1,
    TrainerProgressMetricsV1,
    decode_trainer_metrics_event,
)
from pydantic import JsonValue

from tests.engine.engine_helpers import make_text

_READERS: dict[str, object] = {
    "trainer.metrics.config.v1": TrainerConfigV1,
    "trainer.metrics.progress.v1": TrainerProgressMetricsV1,
    "trainer.metrics.completed.v1": TrainerCompletedMetricsV1,
}


def _has_type(value: JsonValue, hint: object) -> bool:
    if get_origin(hint) is Literal:
        return value in get_args(hint)
    if hint is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return hint is str and isinstance(value, str)


def seed_problems(data: bytes) -> list[str]:
    """What a seed reader of the body's type would refuse in it; empty when it reads it."""
    body = json.loads(data)
    assert isinstance(body, dict)
    reader = _READERS[str(body["type"])]
    problems = []
    for key, declared in get_type_hints(reader, include_extras=True).items():
        optional = get_origin(declared) is NotRequired
        hint = get_args(declared)[0] if optional else declared
        value = body.get(key)
        if optional and value is None:
            continue
        if key not in body or not _has_type(value, hint):
            problems.append(f"{key}={value!r} is not {hint}")
    return problems


_EXAMPLES: list[EventBase] = [
    CONFIG,
    PROGRESS,
    PROGRESS.model_copy(update={"val_loss": None, "val_ppl": None}),
    COMPLETED,
]


@pytest.mark.parametrize("event", _EXAMPLES, ids=lambda e: e.type)
def test_seed_readers_read_the_examples(event: EventBase) -> None:
    assert seed_problems(encode(event)) == []
    seen = decode_trainer_metrics_event(encode(event))
    for key, value in seen.items():
        if key != "memory_mb":  # the seed's name for memory_gb, in MiB
            assert value == getattr(event, key), key


def test_seed_field_lists_are_all_still_ours() -> None:
    for event in _EXAMPLES:
        names = set(get_type_hints(_READERS[event.type])) - {"memory_mb", "optimal_workers"}
        assert names <= set(type(event).model_fields), event.type


def test_a_null_test_loss_is_what_seed_readers_refuse() -> None:
    assert seed_problems(encode(COMPLETED.model_copy(update={"test_loss": None}))) == [
        "test_loss=None is not <class 'float'>"
    ]


@pytest.mark.slow
def test_seed_readers_read_every_event_of_a_default_job(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text(make_text())
    job = SubmitJobV1.model_validate(
        {
            "job_id": "defaults",
            "user_id": 3,
            "backend": "char_lstm",
            "data": {"corpus_path": "corpus.txt"},
        }
    )
    events: list[EventBase] = []
    ctx = RunContext(
        job=job, data_root=tmp_path, artifacts_root=tmp_path / "out", emit=events.append
    )
    events.append(run_job(ctx))
    assert [type(e) for e in events[:2]] == [ConfigEventV1, ProgressEventV1]
    assert isinstance(events[-1], CompletedEventV1)
    assert events[-1].test_loss is not None
    for event in events:
        assert seed_problems(encode(event)) == [], event.type
        assert decode_trainer_metrics_event(encode(event))["type"] == event.type
