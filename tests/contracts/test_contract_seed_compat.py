"""Readers written for the seed project's ``trainer.metrics.*.v1`` events still read ours.

The readers below are the seed's field lists as minimal tolerant pydantic models.
"""

from __future__ import annotations

from typing import Literal

import pytest
from model_trainer_contracts import encode
from model_trainer_contracts.events import EventBase
from model_trainer_contracts.examples import COMPLETED, CONFIG, PROGRESS
from pydantic import BaseModel, ConfigDict


class _SeedReader(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TrainerConfigV1(_SeedReader):
    type: Literal["trainer.metrics.config.v1"]
    job_id: str
    user_id: int
    model_family: str
    model_size: str
    total_epochs: int
    queue: str
    cpu_cores: int
    optimal_threads: int
    batch_size: int
    learning_rate: float


class TrainerProgressMetricsV1(_SeedReader):
    type: Literal["trainer.metrics.progress.v1"]
    job_id: str
    user_id: int
    epoch: int
    total_epochs: int
    step: int
    train_loss: float
    train_ppl: float
    grad_norm: float
    samples_per_sec: float
    val_loss: float | None
    val_ppl: float | None


class TrainerCompletedMetricsV1(_SeedReader):
    type: Literal["trainer.metrics.completed.v1"]
    job_id: str
    user_id: int
    test_loss: float | None
    test_ppl: float | None
    artifact_path: str


_CASES: list[tuple[EventBase, type[_SeedReader]]] = [
    (CONFIG, TrainerConfigV1),
    (PROGRESS, TrainerProgressMetricsV1),
    (PROGRESS.model_copy(update={"val_loss": None, "val_ppl": None}), TrainerProgressMetricsV1),
    (COMPLETED, TrainerCompletedMetricsV1),
]


@pytest.mark.parametrize(("event", "reader"), _CASES, ids=lambda c: getattr(c, "type", ""))
def test_seed_readers_decode_our_events(event: EventBase, reader: type[_SeedReader]) -> None:
    seen = reader.model_validate_json(encode(event))
    for name, value in seen.model_dump().items():
        assert value == getattr(event, name), name


def test_seed_field_lists_are_all_still_ours() -> None:
    for event, reader in _CASES:
        assert set(reader.model_fields) <= set(type(event).model_fields), reader.__name__
