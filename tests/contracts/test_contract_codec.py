"""Codec behaviour the contract promises: typed errors naming fields, CloudEvents headers."""

from __future__ import annotations

import json
import pickle
import re
from datetime import datetime

import pytest
from model_trainer_contracts import (
    CancelJobV1,
    FailedEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
    ce_headers,
    decode_command,
    decode_event,
    decode_event_tolerant,
    encode,
    salvage_job_id,
    salvage_user_id,
)
from model_trainer_contracts.examples import CONFIG, EXAMPLES, FAILED, QUEUED, SUBMIT
from pydantic import JsonValue, ValidationError

_C = ModelTrainerErrorCode


def _submit(**changes: JsonValue) -> dict[str, JsonValue]:
    body: dict[str, JsonValue] = json.loads(encode(SUBMIT))
    body.update(changes)
    return body


def _refusal(body: JsonValue) -> ModelTrainerError:
    with pytest.raises(ModelTrainerError) as caught:
        decode_command(json.dumps(body).encode())
    return caught.value


def _fields(err: ModelTrainerError) -> list[str]:
    violations = err.details["violations"]
    assert isinstance(violations, list)
    fields = []
    for v in violations:
        assert isinstance(v, dict)
        field = v["field"]
        assert isinstance(field, str)
        fields.append(field)
    return fields


def test_encode_is_compact_utf8_json() -> None:
    cancel = CancelJobV1(job_id="j1", reason="ünïcode ✓")
    data = encode(cancel)
    assert data == '{"type":"trainer.job.cancel.v1","job_id":"j1","reason":"ünïcode ✓"}'.encode()


def test_negative_learning_rate_names_the_field() -> None:
    training = _submit()["training"]
    assert isinstance(training, dict)
    err = _refusal(_submit(training={**training, "learning_rate": -1}))
    assert err.code is _C.COMMAND_INVALID
    assert _fields(err) == ["training.learning_rate"]
    assert "training.learning_rate" in err.message


def test_each_violation_is_named_without_union_tags() -> None:
    body = _submit(
        model={"n_head": 5, "n_layer": 0},
        tokenizer={"kind": "bpe", "vocab_size": 3},
        training={"betas": [0.9, 1.5]},
        surprise=True,
    )
    assert sorted(_fields(_refusal(body))) == [
        "model.n_layer",
        "surprise",
        "tokenizer.vocab_size",
        "training.betas.1",
    ]


def test_cross_field_rule_names_the_object() -> None:
    # n_embd 384 is not a multiple of 5 heads: the model object as a whole is at fault
    assert _fields(_refusal(_submit(model={"backend": "gpt2", "n_head": 5}))) == ["model"]
    assert _fields(_refusal(_submit(data={"inline_text": "x", "corpus_path": "y"}))) == ["data"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "trainer.job.explode.v1", "job_id": "j"}, "type"),
        ({"job_id": "j"}, "type"),
        ({"type": "trainer.job.submit.v1", "model": {"backend": "bert"}}, "model.backend"),
    ],
)
def test_unknown_tags_name_the_discriminator(body: dict[str, JsonValue], field: str) -> None:
    assert field in _fields(_refusal(body))


@pytest.mark.parametrize("job_id", [".", "..", ".hidden", "-rf", "a/b", "", "x" * 129, "a\n"])
def test_job_ids_that_are_not_safe_folder_names_are_refused(job_id: str) -> None:
    err = _refusal({"type": "trainer.job.cancel.v1", "job_id": job_id})
    assert _fields(err) == ["job_id"]
    assert salvage_job_id(json.dumps({"job_id": job_id}).encode()) is None


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe{}", _C.COMMAND_UNDECODABLE),
        (b'{"type": NaN}', _C.COMMAND_UNDECODABLE),
        (b"1" * 5000, _C.COMMAND_UNDECODABLE),  # past Python's int-digit limit
        (b"[" * 10_000, _C.COMMAND_UNDECODABLE),
        (b'{"job_id": "\\ud800"}', _C.COMMAND_UNDECODABLE),  # lone surrogate: never encodable
        (b'["trainer.job.cancel.v1"]', _C.COMMAND_UNDECODABLE),
        (b'{"type":"trainer.job.cancel.v1","job_id":"j"} trailing', _C.COMMAND_UNDECODABLE),
    ],
)
def test_bad_bytes_raise_typed_errors(data: bytes, code: ModelTrainerErrorCode) -> None:
    with pytest.raises(ModelTrainerError) as caught:
        decode_command(data)
    assert caught.value.code is code
    with pytest.raises(ModelTrainerError):
        decode_event(data)
    assert salvage_job_id(data) is None
    assert salvage_user_id(data) == 0


def test_oversized_command_is_refused_before_parsing() -> None:
    with pytest.raises(ModelTrainerError) as caught:
        decode_command(b"x" * 101, max_bytes=100)
    assert caught.value.code is _C.COMMAND_TOO_LARGE
    assert caught.value.details == {"size": 101, "limit": 100}


def test_salvage_reads_ids_from_refused_commands() -> None:
    data = json.dumps({"job_id": "job-7", "user_id": 42, "backend": "nope"}).encode()
    assert (salvage_job_id(data), salvage_user_id(data)) == ("job-7", 42)
    too_long: JsonValue = {"type": "trainer.job.cancel.v1", "job_id": "j", "reason": "r" * 513}
    assert _fields(_refusal(too_long)) == ["reason"]
    assert salvage_job_id(json.dumps(too_long).encode()) == "j"
    assert salvage_user_id(b'{"user_id": true}') == 0
    assert salvage_user_id(b'{"user_id": -3}') == 0


def test_events_ignore_unknown_fields_and_commands_do_not() -> None:
    event = json.loads(encode(CONFIG))
    event["added_in_v1_7"] = {"anything": [1, 2]}
    assert decode_event(json.dumps(event).encode()) == CONFIG
    command = json.loads(encode(SUBMIT))
    command["added_in_v1_7"] = 1
    assert _fields(_refusal(command)) == ["added_in_v1_7"]


def test_event_timestamps_are_rfc3339_utc() -> None:
    ts = json.loads(encode(FAILED))["ts"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ts)
    assert datetime.fromisoformat(ts) == FAILED.ts


def test_errors_survive_pickling_for_worker_processes() -> None:
    err = ModelTrainerError(_C.CUDA_OOM, "no room", details={"step": 3}, stage="train")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ModelTrainerError)
    assert (back.code, back.message, back.details, back.stage) == (
        _C.CUDA_OOM,
        "no room",
        {"step": 3},
        "train",
    )
    assert str(back) == str(err)


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.type)
def test_cloudevents_binary_mode_headers(message: SubmitJobV1) -> None:
    headers = ce_headers(message, source="urn:model-trainer:test")
    names = [name for name, _ in headers]
    assert names == ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"]
    assert all(isinstance(value, bytes) for _, value in headers)
    values = {name: value.decode("utf-8") for name, value in headers}
    assert values["ce_specversion"] == "1.0"
    assert values["ce_type"] == message.type
    assert values["ce_source"] == "urn:model-trainer:test"
    assert values["content-type"] == "application/json"
    assert values["ce_id"]
    assert _RFC3339.fullmatch(values["ce_time"])


def test_event_headers_reuse_event_id_and_ts() -> None:
    values = dict(ce_headers(CONFIG))
    assert values["ce_id"] == CONFIG.event_id.encode()
    assert values["ce_time"] == json.loads(encode(CONFIG))["ts"].encode()
    assert values["ce_source"] == b"model-trainer"


def test_command_headers_get_fresh_ids() -> None:
    first, second = dict(ce_headers(SUBMIT)), dict(ce_headers(SUBMIT))
    assert first["ce_id"] != second["ce_id"]


def test_failed_events_with_a_newer_code_still_decode() -> None:
    body = json.loads(encode(FAILED))
    body["code"] = "QUANTUM_DECOHERENCE"
    event = decode_event(json.dumps(body).encode())
    assert isinstance(event, FailedEventV1)
    assert event.code is _C.INTERNAL_ERROR
    assert event.details == {**FAILED.details, "unknown_code": "QUANTUM_DECOHERENCE"}
    assert (event.message, event.http_status) == (FAILED.message, FAILED.http_status)
    body["code"] = 7
    with pytest.raises(ModelTrainerError):
        decode_event(json.dumps(body).encode())


def test_an_unknown_field_names_the_closest_known_one() -> None:
    training = _submit()["training"]
    assert isinstance(training, dict)
    err = _refusal(_submit(training={**training, "lerning_rate": 0.01}))
    assert _fields(err) == ["training.lerning_rate"]
    assert "did you mean learning_rate" in err.message
    body = _submit(trainng={}, model={"backend": "gpt2", "n_layers": 2})
    errors = {v["field"]: v["error"] for v in _violations(_refusal(body))}
    assert errors["trainng"].endswith("did you mean training?")
    assert errors["model.n_layers"].endswith("did you mean n_layer?")
    assert "did you mean" not in str(_violations(_refusal(_submit(zzz_qqq=1))))


def _violations(err: ModelTrainerError) -> list[dict[str, str]]:
    found = err.details["violations"]
    assert isinstance(found, list)
    return [{k: str(v) for k, v in item.items()} for item in found if isinstance(item, dict)]


def test_common_names_from_other_trainers_are_aliases() -> None:
    body = _submit(
        backend="char_lstm",
        model={"seq_len": 32},
        tokenizer={"kind": "char"},
        training={
            "max_steps": 10,
            "gradient_accumulation_steps": 4,
            "lr_scheduler_type": "linear",
            "max_grad_norm": 0.5,
            "eval_steps": 5,
            "warmup_ratio": 0.1,
        },
    )
    job = decode_command(json.dumps(body).encode())
    assert isinstance(job, SubmitJobV1)
    tr = job.training
    assert (tr.grad_accum_steps, tr.schedule, tr.grad_clip, tr.eval_every) == (4, "linear", 0.5, 5)
    assert tr.warmup_ratio == 0.1
    assert job.model.block_size == 32
    written = json.loads(encode(job))
    assert written["model"]["block_size"] == 32
    assert "seq_len" not in written["model"]
    assert "gradient_accumulation_steps" not in written["training"]
    assert written["training"]["grad_accum_steps"] == 4
    assert decode_command(encode(job)) == job


def test_an_alias_and_its_field_together_are_refused() -> None:
    err = _refusal(_submit(training={"grad_accum_steps": 2, "gradient_accumulation_steps": 4}))
    assert _fields(err) == ["training.gradient_accumulation_steps"]
    assert "another name for grad_accum_steps" in err.message
    err = _refusal(_submit(backend="char_lstm", model={"block_size": 8, "seq_len": 8}))
    assert _fields(err) == ["model.seq_len"]


def test_warmup_is_steps_or_a_ratio() -> None:
    err = _refusal(_submit(training={"warmup_steps": 10, "warmup_ratio": 0.1}))
    assert _fields(err) == ["training"]
    assert "warmup_steps or warmup_ratio" in err.message
    assert _fields(_refusal(_submit(training={"warmup_ratio": 1.5}))) == ["training.warmup_ratio"]


def test_tolerant_decode_skips_unknown_event_types_only() -> None:
    future = json.loads(encode(CONFIG))
    future["type"] = "trainer.metrics.future.v9"
    assert decode_event_tolerant(json.dumps(future).encode()) is None
    assert decode_event_tolerant(encode(SUBMIT)) is None  # a command is no event
    assert decode_event_tolerant(encode(CONFIG)) == CONFIG
    assert decode_event_tolerant(encode(QUEUED)) == QUEUED
    broken = json.loads(encode(CONFIG))
    broken["vocab_size"] = 0
    for data in (b"\xff", b"[]", b'{"job_id": "j"}', b'{"type": 7}', json.dumps(broken).encode()):
        with pytest.raises(ModelTrainerError):
            decode_event_tolerant(data)
    with pytest.raises(ModelTrainerError):
        decode_event(json.dumps(future).encode())


@pytest.mark.parametrize(
    ("section", "change", "field", "says"),
    [
        ("data", {"val_fraction": 0.5, "test_fraction": 0.4}, "data", "at least 10% to train"),
        ("training", {"epochs": 2}, "training", "max_steps or epochs, not both"),
        ("training", {"min_lr": 0.001}, "training", "min_lr must not exceed learning_rate"),
        ("resources", {"processes": 3}, "(root)", "batch_size 32 does not split over 3"),
        ("generate", {"prompts": 2}, "(root)", "generate needs chat or instruction data"),
    ],
)
def test_cross_field_rules_say_what_to_change(
    section: str, change: dict[str, JsonValue], field: str, says: str
) -> None:
    body = _submit()
    given = body.get(section) or {}
    assert isinstance(given, dict)
    err = _refusal({**body, section: {**given, **change}})
    assert (err.code, _fields(err)) == (_C.COMMAND_INVALID, [field])
    assert says in err.message


def test_model_settings_of_another_backend_are_refused() -> None:
    err = _refusal(_submit(backend="char_lstm"))
    assert _fields(err) == ["(root)"]
    assert "model settings are for 'gpt2' but backend is 'char_lstm'" in err.message


def test_a_failed_event_that_is_not_an_object_gets_pydantics_own_error() -> None:
    # The tolerant-code hook runs first: it passes a non-object on untouched.
    with pytest.raises(ValidationError) as refused:
        FailedEventV1.model_validate(["trainer.job.failed.v1"])
    assert [error["type"] for error in refused.value.errors()] == ["model_type"]
