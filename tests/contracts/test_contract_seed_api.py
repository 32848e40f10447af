"""The seed's event API by name (``model_trainer_contracts.seed``): constructors, codec, guards."""

from __future__ import annotations

import json

import pytest
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, encode
from model_trainer_contracts.examples import COMPLETED, CONFIG, FAILED, PROGRESS, QUEUED
from model_trainer_contracts.seed import (
    TrainerCompletedMetricsV1,
    TrainerConfigV1,
    TrainerMetricsEventType,
    TrainerMetricsEventV1,
    TrainerProgressMetricsV1,
    decode_trainer_metrics_event,
    encode_trainer_metrics_event,
    is_completed_metrics,
    is_config,
    is_progress_metrics,
    make_completed_metrics_event,
    make_config_event,
    make_progress_metrics_event,
)
from pydantic import JsonValue

_C = ModelTrainerErrorCode


def _config() -> TrainerConfigV1:
    return make_config_event(
        job_id="seed-1",
        user_id=42,
        model_family="gpt2",
        model_size="0.80M",
        total_epochs=3,
        queue="trainer.jobs[0]",
        cpu_cores=8,
        memory_mb=16_384,
        optimal_threads=4,
        optimal_workers=2,
        batch_size=16,
        learning_rate=3e-4,
    )


def _progress(**val: float) -> TrainerProgressMetricsV1:
    return make_progress_metrics_event(
        job_id="seed-1",
        user_id=42,
        epoch=0,
        total_epochs=3,
        step=10,
        train_loss=2.5,
        train_ppl=12.18,
        grad_norm=0.7,
        samples_per_sec=310.0,
        **val,
    )


def _completed() -> TrainerCompletedMetricsV1:
    return make_completed_metrics_event(
        job_id="seed-1", user_id=42, test_loss=2.1, test_ppl=8.17, artifact_path="out/seed-1"
    )


def _summary(event: TrainerMetricsEventV1) -> str:
    """What a seed dashboard does with the guards: narrow, then read typed fields."""
    if is_config(event):
        return f"{event['model_family']} {event['model_size']} on {event['queue']}"
    if is_progress_metrics(event):
        return f"step {event['step']} loss {event['train_loss']:.2f} val {event.get('val_loss')}"
    if is_completed_metrics(event):
        return f"done: test loss {event['test_loss']:.2f} at {event['artifact_path']}"
    return "unknown"


def test_constructors_build_the_seed_dicts() -> None:
    assert _config()["memory_mb"] == 16_384
    minimal = make_config_event(
        job_id="seed-1",
        user_id=42,
        model_family="lstm",
        model_size="0.10M",
        total_epochs=1,
        queue="q",
    )
    assert set(minimal) == {
        "type",
        "job_id",
        "user_id",
        "model_family",
        "model_size",
        "total_epochs",
        "queue",
    }
    assert "val_loss" not in _progress()
    assert _progress(val_loss=2.6, val_ppl=13.46)["val_ppl"] == 13.46
    assert _completed()["type"] == "trainer.metrics.completed.v1"


def test_guards_narrow_each_type() -> None:
    events: list[TrainerMetricsEventV1] = [_config(), _progress(val_loss=2.6), _completed()]
    assert [_summary(e) for e in events] == [
        "gpt2 0.80M on trainer.jobs[0]",
        "step 10 loss 2.50 val 2.6",
        "done: test loss 2.10 at out/seed-1",
    ]
    kinds: list[TrainerMetricsEventType] = [e["type"] for e in events]
    assert [is_config(e) for e in events] == [True, False, False]
    assert [is_progress_metrics(e) for e in events] == [False, True, False]
    assert [is_completed_metrics(e) for e in events] == [False, False, True]
    assert len(set(kinds)) == 3


def test_encode_then_decode_round_trips_as_str_and_bytes() -> None:
    events: list[TrainerMetricsEventV1] = [
        _config(),
        _progress(),
        _progress(val_loss=2.6, val_ppl=13.46),
        _completed(),
    ]
    for event in events:
        text = encode_trainer_metrics_event(event)
        assert isinstance(text, str)
        assert json.loads(text) == event
        assert text == json.dumps(event, separators=(",", ":"))  # compact
        assert decode_trainer_metrics_event(text) == event
        assert decode_trainer_metrics_event(text.encode()) == event


def test_decode_reads_this_services_events_as_seed_dicts() -> None:
    config = decode_trainer_metrics_event(encode(CONFIG))
    assert is_config(config)
    assert config["queue"] == CONFIG.queue
    assert config["memory_mb"] == round(CONFIG.memory_gb * 1024)
    assert "seq" not in config
    assert "optimal_workers" not in config
    progress = decode_trainer_metrics_event(encode(PROGRESS))
    assert is_progress_metrics(progress)
    assert progress["val_loss"] == PROGRESS.val_loss
    completed = decode_trainer_metrics_event(encode(COMPLETED))
    assert is_completed_metrics(completed)
    assert completed["test_ppl"] == COMPLETED.test_ppl


def _refused(call: object) -> ModelTrainerError:
    assert callable(call)
    with pytest.raises(ModelTrainerError) as caught:
        call()
    return caught.value


def _fields(err: ModelTrainerError) -> list[str]:
    violations = err.details["violations"]
    assert isinstance(violations, list)
    return [str(v["field"]) for v in violations if isinstance(v, dict)]


def test_values_are_checked_by_the_contracts_models() -> None:
    err = _refused(
        lambda: make_progress_metrics_event(
            job_id="../etc",
            user_id=-1,
            epoch=0,
            total_epochs=1,
            step=1,
            train_loss=float("nan"),
            train_ppl=1.0,
            grad_norm=-0.5,
            samples_per_sec=1.0,
        )
    )
    assert err.code is _C.COMMAND_INVALID
    assert _fields(err) == ["job_id", "user_id", "train_loss", "grad_norm"]
    err = _refused(
        lambda: make_config_event(
            job_id="j",
            user_id=1,
            model_family="f",
            model_size="s",
            total_epochs=1,
            queue="q",
            optimal_workers=0,
            memory_mb=-1,
        )
    )
    assert _fields(err) == ["memory_mb", "optimal_workers"]
    bad: TrainerCompletedMetricsV1 = {**_completed(), "test_loss": float("inf")}
    assert _fields(_refused(lambda: encode_trainer_metrics_event(bad))) == ["test_loss"]


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        (encode(FAILED), _C.COMMAND_INVALID, "type"),
        (encode(QUEUED), _C.COMMAND_INVALID, "type"),
        (encode(COMPLETED.model_copy(update={"test_loss": None})), _C.COMMAND_INVALID, "test_loss"),
        (b'{"type": "trainer.metrics.config.v1", "job_id": "j"}', _C.COMMAND_INVALID, "user_id"),
        (b"[1, 2]", _C.COMMAND_UNDECODABLE, None),
        ("not json", _C.COMMAND_UNDECODABLE, None),
    ],
)
def test_decode_refuses_with_typed_errors(
    payload: str | bytes, code: ModelTrainerErrorCode, field: str | None
) -> None:
    err = _refused(lambda: decode_trainer_metrics_event(payload))
    assert err.code is code
    if field is not None:
        assert field in _fields(err)


def test_a_null_test_loss_says_why() -> None:
    body: dict[str, JsonValue] = json.loads(encode(COMPLETED))
    body["test_loss"] = None
    err = _refused(lambda: decode_trainer_metrics_event(json.dumps(body)))
    assert "test_fraction" in err.message


def test_a_fractional_memory_mb_is_refused_though_memory_gb_may_be_fractional() -> None:
    # memory_mb is checked as the service's memory_gb (a float), then as the seed's int.
    config: dict[str, JsonValue] = {
        "type": "trainer.metrics.config.v1",
        "job_id": "j",
        "user_id": 1,
        "model_family": "f",
        "model_size": "s",
        "total_epochs": 1,
        "queue": "q",
    }
    err = _refused(lambda: decode_trainer_metrics_event(json.dumps({**config, "memory_mb": 1.5})))
    assert (err.code, _fields(err)) == (_C.COMMAND_INVALID, ["memory_mb"])
    assert "valid integer" in err.message
    from_gb = decode_trainer_metrics_event(json.dumps({**config, "memory_gb": 1.5}))
    assert from_gb.get("memory_mb") == 1536
