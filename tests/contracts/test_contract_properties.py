"""Properties: valid messages round-trip unchanged; no input makes decode raise anything but
ModelTrainerError; refusals name fields the way the publisher wrote them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from model_trainer_contracts import (
    BpeTokenizer,
    CancelJobV1,
    CharLstmModel,
    CharTokenizer,
    CompletedEventV1,
    ConfigEventV1,
    DataSpec,
    FailedEventV1,
    Gpt2Model,
    JobTokenizer,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    ProgressSpec,
    QueuedEventV1,
    SubmitJobV1,
    TrainingSpec,
    decode_command,
    decode_event,
    encode,
    salvage_job_id,
    salvage_user_id,
)
from model_trainer_contracts.commands import JOB_ID_PATTERN
from model_trainer_contracts.events import EventBase
from model_trainer_contracts.examples import CANCEL, SUBMIT
from pydantic import JsonValue

from tests.layers import examples

# Strategies: every valid message, bounds respected.

job_ids = st.from_regex(JOB_ID_PATTERN, fullmatch=True)
labels = st.dictionaries(
    st.text(min_size=1, max_size=64), st.text(max_size=256), max_size=4
) | st.dictionaries(st.text("abc", min_size=1, max_size=3), st.just(""), min_size=32, max_size=32)
user_ids = st.integers(0, 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)


def _unit(
    *, low: float = 0.0, high: float = 1.0, open_high: bool = True
) -> st.SearchStrategy[float]:
    return st.floats(low, high, exclude_max=open_high, allow_nan=False)


char_lstm = st.builds(
    CharLstmModel,
    embedding_dim=st.integers(1, 4096),
    hidden_size=st.integers(1, 8192),
    num_layers=st.integers(1, 16),
    dropout=_unit(),
    block_size=st.integers(2, 4096),
)


def _gpt2(n_head: int) -> st.SearchStrategy[Gpt2Model]:
    widths = st.integers(max(1, -(-8 // n_head)), 8192 // n_head).map(lambda k: k * n_head)
    return st.builds(
        Gpt2Model,
        n_layer=st.integers(1, 48),
        n_head=st.just(n_head),
        n_embd=widths,
        block_size=st.integers(2, 8192),
        dropout=_unit(),
    )


gpt2 = st.integers(1, 64).flatmap(_gpt2)
tokenizers = st.one_of(
    st.builds(CharTokenizer),
    st.builds(
        BpeTokenizer, vocab_size=st.integers(260, 65_536), min_frequency=st.integers(1, 1000)
    ),
    st.builds(JobTokenizer, job_id=job_ids),
)
data_specs = st.builds(
    DataSpec,
    corpus_path=st.text(min_size=1, max_size=1024),
    format=st.sampled_from(["text", "jsonl"]),
    jsonl_field=st.text(min_size=1, max_size=128),
    val_fraction=st.floats(0.0, 0.5, exclude_min=True),
    test_fraction=st.floats(0.0, 0.39),
) | st.builds(DataSpec, inline_text=st.text(min_size=1, max_size=200))


@st.composite
def training_specs(draw: st.DrawFn) -> TrainingSpec:
    learning_rate = draw(st.floats(0.0, 10.0, exclude_min=True))
    length = draw(
        st.fixed_dictionaries({"max_steps": st.integers(1, 10_000_000)})
        | st.fixed_dictionaries({"epochs": st.floats(0.0, 10_000.0, exclude_min=True)})
        | st.just({})
    )
    return TrainingSpec(
        **length,
        batch_size=draw(st.integers(1, 4096)),
        grad_accum_steps=draw(st.integers(1, 1024)),
        learning_rate=learning_rate,
        schedule=draw(st.sampled_from(["constant", "linear", "cosine"])),
        **draw(
            st.fixed_dictionaries({"warmup_steps": st.integers(0, 1_000_000)})
            | st.fixed_dictionaries({"warmup_ratio": st.floats(0.0, 1.0)})
        ),
        min_lr=draw(st.floats(0.0, learning_rate)),
        optimizer=draw(st.sampled_from(["adamw", "sgd"])),
        betas=(draw(_unit()), draw(_unit())),
        momentum=draw(_unit()),
        weight_decay=draw(st.floats(0.0, 10.0)),
        grad_clip=draw(st.none() | st.floats(0.0, 1000.0, exclude_min=True)),
        seed=draw(st.integers(0, 2**32 - 1)),
        device=draw(st.sampled_from(["auto", "cpu", "cuda"])),
        precision=draw(st.sampled_from(["auto", "fp32", "fp16", "bf16"])),
        eval_every=draw(st.integers(1, 10_000_000)),
        eval_batches=draw(st.integers(1, 10_000)),
        early_stopping_patience=draw(st.none() | st.integers(1, 10_000)),
        checkpoint_every=draw(st.none() | st.integers(1, 10_000_000)),
    )


@st.composite
def submits(draw: st.DrawFn) -> SubmitJobV1:
    model = draw(char_lstm | gpt2)
    return SubmitJobV1(
        job_id=draw(job_ids),
        user_id=draw(user_ids),
        backend=model.backend,
        model=model,
        tokenizer=draw(tokenizers),
        data=draw(data_specs),
        training=draw(training_specs()),
        init_from=draw(st.none() | job_ids),
        progress=draw(
            st.builds(
                ProgressSpec,
                every_steps=st.integers(1, 1_000_000),
                every_seconds=st.none() | st.floats(0.0, 3600.0, exclude_min=True),
            )
        ),
        timeout_s=draw(st.none() | st.floats(0.0, 7 * 24 * 3600.0, exclude_min=True)),
        labels=draw(labels),
    )


cancels = st.builds(CancelJobV1, job_id=job_ids, reason=st.text(max_size=512))
commands = submits() | cancels

_offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
timestamps = st.datetimes(datetime(1971, 1, 1), datetime(2200, 1, 1), timezones=_offsets)
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
envelope = {
    "event_id": st.text(min_size=1, max_size=64),
    "job_id": job_ids,
    "user_id": user_ids,
    "ts": timestamps,
    "seq": st.integers(0, 2**63),
    "attempt": st.integers(1, 1000),
    "labels": labels,
}
_counts = st.integers(0, 2**53)
queueds = st.builds(
    QueuedEventV1,
    **envelope,
    position=_counts,
    queue=st.text(),
    reason=st.sampled_from(["submitted", "preempted", "retry"]) | st.text(),
)
configs = st.builds(
    ConfigEventV1,
    **envelope,
    backend=st.sampled_from(["char_lstm", "gpt2"]),
    model_family=st.text(),
    model_size=st.text(),
    num_parameters=_counts,
    tokenizer=st.text(),
    vocab_size=st.integers(1, 2**31),
    train_tokens=_counts,
    val_tokens=_counts,
    test_tokens=_counts,
    total_steps=_counts,
    total_epochs=_counts,
    start_step=_counts,
    device=st.text(),
    precision=st.text(),
    optimal_threads=st.integers(1, 1024),
    cpu_cores=st.integers(1, 1024),
    memory_gb=non_negative,
    batch_size=st.integers(1, 4096),
    learning_rate=st.floats(0.0, 10.0, exclude_min=True),
    queue=st.text(),
)
progresses = st.builds(
    ProgressEventV1,
    **envelope,
    epoch=_counts,
    total_epochs=_counts,
    step=_counts,
    total_steps=_counts,
    train_loss=finite,
    train_ppl=finite,
    grad_norm=non_negative,
    learning_rate=non_negative,
    samples_per_sec=non_negative,
    tokens_per_sec=non_negative,
    elapsed_s=non_negative,
    eta_s=non_negative,
    val_loss=st.none() | finite,
    val_ppl=st.none() | finite,
)
completions = st.builds(
    CompletedEventV1,
    **envelope,
    test_loss=st.none() | finite,
    test_ppl=st.none() | finite,
    best_val_loss=st.none() | finite,
    steps=_counts,
    duration_s=non_negative,
    early_stopped=st.booleans(),
    artifact_path=st.text(),
    manifest_digest=st.text("0123456789abcdef", min_size=64, max_size=64),
)
failures = st.builds(
    FailedEventV1,
    **envelope,
    code=st.sampled_from(ModelTrainerErrorCode),
    message=st.text(),
    retryable=st.booleans(),
    http_status=st.integers(100, 599),
    stage=st.sampled_from(["validate", "prepare", "train", "evaluate", "save"]),
    details=st.dictionaries(st.text(), json_values, max_size=4),
)
events = queueds | configs | progresses | completions | failures


_settings = settings(max_examples=examples(200), deadline=None)
_TAGS = {"char_lstm", "gpt2", "char", "bpe", "job"}


@_settings
@given(commands)
def test_commands_round_trip(command: SubmitJobV1 | CancelJobV1) -> None:
    data = encode(command)
    assert decode_command(data) == command
    assert encode(decode_command(data)) == data
    assert salvage_job_id(data) == command.job_id


@_settings
@given(events)
def test_events_round_trip(event: EventBase) -> None:
    data = encode(event)
    assert decode_event(data) == event
    assert encode(decode_event(data)) == data


def _decode_all(data: bytes) -> None:
    """Decoding may succeed or raise ModelTrainerError; anything else fails the test."""
    for decode in (decode_command, decode_event):
        refusal: ModelTrainerError | None = None
        try:
            decode(data)
        except ModelTrainerError as err:
            refusal = err
        if refusal is not None:
            assert refusal.code in ModelTrainerErrorCode
            assert refusal.message
    assert salvage_job_id(data) is None or isinstance(salvage_job_id(data), str)
    assert salvage_user_id(data) >= 0


@_settings
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    _decode_all(data)


@_settings
@given(json_values)
def test_arbitrary_json_raises_only_typed_errors(value: JsonValue) -> None:
    _decode_all(json.dumps(value).encode())


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, JsonValue]:
    """A valid command with one to three values replaced, removed or added, at any depth."""
    body: dict[str, JsonValue] = json.loads(encode(draw(st.sampled_from([SUBMIT, CANCEL]))))
    for _ in range(draw(st.integers(1, 3))):
        node: dict[str, JsonValue] = body
        while True:
            key = draw(st.sampled_from(sorted(node)))
            child = node[key]
            if isinstance(child, dict) and child and draw(st.booleans()):
                node = child
                continue
            break
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            node[key] = draw(json_values | st.sampled_from([-1, 0, 10**30, "", "gpt2", 1e308]))
        elif action == "remove":
            del node[key]
        else:
            node[draw(st.text(max_size=8))] = draw(json_values)
    return body


def _path_is_as_written(field: str, body: JsonValue) -> bool:
    """No union tag appears in a field path unless the publisher wrote that key."""
    node = body
    for part in field.split("."):
        if part in _TAGS and not (isinstance(node, dict) and part in node):
            return False
        node = node.get(part) if isinstance(node, dict) else None
    return True


@_settings
@given(_mutated())
def test_mutated_commands_decode_or_name_the_fields(body: dict[str, JsonValue]) -> None:
    data = json.dumps(body).encode()
    refusal: ModelTrainerError | None = None
    try:
        command = decode_command(data)
    except ModelTrainerError as err:
        refusal = err
    if refusal is None:
        assert decode_command(encode(command)) == command
        return
    assert refusal.code is ModelTrainerErrorCode.COMMAND_INVALID
    violations = refusal.details["violations"]
    assert isinstance(violations, list)
    assert violations
    for violation in violations:
        assert isinstance(violation, dict)
        field = violation["field"]
        assert isinstance(field, str)
        assert _path_is_as_written(field, body), field
