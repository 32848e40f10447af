"""The seed project's trainer-metrics event API, by name, over this contract.

Code written against the seed's ``platform_core.trainer_metrics_events`` ports by changing
that import to ``model_trainer_contracts.seed``: the same TypedDicts, constructors, codec and
type guards. Every value is checked by this contract's event models (``ConfigEventV1``,
``ProgressEventV1``, ``CompletedEventV1``: the same types and bounds), so each field has one
definition. The dicts hold the seed's fields only: decoding one of this service's events
keeps those and drops the rest.

Two seed fields have no twin here and are checked with the bounds of their nearest one:
``memory_mb`` (``memory_gb``; decoding a service event fills it in from ``memory_gb``) and
``optimal_workers`` (``optimal_threads``). As in the seed, an optional field that is null or
absent is left out of the dict. Failures raise :class:`ModelTrainerError` (COMMAND_INVALID,
or COMMAND_UNDECODABLE for text that is not a JSON object), never anything else.
"""

import functools
from collections.abc import Mapping
from typing import Annotated, Literal, NotRequired, TypeGuard, TypeVar

from pydantic import ConfigDict, Field, JsonValue, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from .codec import _parse_json
from .errors import ModelTrainerError, ModelTrainerErrorCode
from .events import CompletedEventV1, ConfigEventV1, EventBase, ProgressEventV1

TrainerMetricsEventType = Literal[
    "trainer.metrics.config.v1",
    "trainer.metrics.progress.v1",
    "trainer.metrics.completed.v1",
]


class TrainerConfigV1(TypedDict):
    """The resolved configuration, published when a job starts."""

    type: Literal["trainer.metrics.config.v1"]
    job_id: str
    user_id: int
    model_family: str
    model_size: str
    total_epochs: int
    queue: str
    cpu_cores: NotRequired[int]
    memory_mb: NotRequired[int]
    optimal_threads: NotRequired[int]
    optimal_workers: NotRequired[int]
    batch_size: NotRequired[int]
    learning_rate: NotRequired[float]


class TrainerProgressMetricsV1(TypedDict):
    """Training progress; ``val_loss``/``val_ppl`` only when an evaluation just ran."""

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
    val_loss: NotRequired[float]
    val_ppl: NotRequired[float]


class TrainerCompletedMetricsV1(TypedDict):
    """The job's result, published when it completes."""

    type: Literal["trainer.metrics.completed.v1"]
    job_id: str
    user_id: int
    test_loss: float
    test_ppl: float
    artifact_path: str


TrainerMetricsEventV1 = TrainerConfigV1 | TrainerProgressMetricsV1 | TrainerCompletedMetricsV1

_CONFIG: TypeAdapter[TrainerConfigV1] = TypeAdapter(TrainerConfigV1)
_PROGRESS: TypeAdapter[TrainerProgressMetricsV1] = TypeAdapter(TrainerProgressMetricsV1)
_COMPLETED: TypeAdapter[TrainerCompletedMetricsV1] = TypeAdapter(TrainerCompletedMetricsV1)
_EVENT: TypeAdapter[TrainerMetricsEventV1] = TypeAdapter(
    Annotated[TrainerMetricsEventV1, Field(discriminator="type")]
)
_CONFIG_KEYS = (TrainerConfigV1.__required_keys__, TrainerConfigV1.__optional_keys__)
_PROGRESS_KEYS = (
    TrainerProgressMetricsV1.__required_keys__,
    TrainerProgressMetricsV1.__optional_keys__,
)
_COMPLETED_KEYS = (
    TrainerCompletedMetricsV1.__required_keys__,
    TrainerCompletedMetricsV1.__optional_keys__,
)
_CHECKED_AS = {"memory_mb": "memory_gb", "optimal_workers": "optimal_threads"}
_NOT_NULL = {
    "test_loss": "null: the job held out no test split (its data.test_fraction was 0)",
    "test_ppl": "null: the job held out no test split (its data.test_fraction was 0)",
}
_INVALID = ModelTrainerErrorCode.COMMAND_INVALID
_T = TypeVar("_T")


@functools.cache
def _field_adapter(model: type[EventBase], name: str) -> TypeAdapter[object]:
    """Validates one value as ``model``'s field ``name``: its type, bounds and float rules."""
    info = model.model_fields[name]
    allow_inf_nan = model.model_config.get("allow_inf_nan", True)
    return TypeAdapter(info.rebuild_annotation(), config=ConfigDict(allow_inf_nan=allow_inf_nan))


def _refusal(violations: list[JsonValue]) -> ModelTrainerError:
    first = violations[0] if violations else {}
    summary = f"{first['field']}: {first['error']}" if isinstance(first, dict) else "invalid"
    more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
    return ModelTrainerError(
        _INVALID,
        f"invalid trainer metrics event: {summary}{more}",
        details={"violations": violations},
    )


def _values(
    keys: tuple[frozenset[str], frozenset[str]], model: type[EventBase], data: Mapping[str, object]
) -> dict[str, object]:
    """The fields of ``data`` named by ``keys`` (a seed type's required and optional keys),
    optional ones left out when null, each checked by ``model``; raises the refusal naming
    every failing field."""
    required, optional = keys
    values = {
        key: value
        for key, value in data.items()
        if key in required or (key in optional and value is not None)
    }
    violations: list[JsonValue] = []
    for key in sorted(required - values.keys()):
        violations.append({"field": key, "error": "Field required"})
    for key, value in values.items():
        if value is None:  # only required fields are kept when null; the seed's are not nullable
            violations.append({"field": key, "error": _NOT_NULL.get(key, "Input is null")})
            continue
        field = _CHECKED_AS.get(key, key)
        try:
            _field_adapter(model, field).validate_python(value)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(part) for part in (key, *err["loc"]))
                violations.append({"field": where, "error": err["msg"]})
    if violations:
        raise _refusal(violations)
    return values


def _typed(adapter: TypeAdapter[_T], values: dict[str, object]) -> _T:
    try:
        return adapter.validate_python(values)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        violations: list[JsonValue] = [
            {"field": ".".join(str(part) for part in err["loc"]), "error": err["msg"]}
            for err in errors
        ]
        raise _refusal(violations) from None


def _config(data: Mapping[str, object]) -> TrainerConfigV1:
    gb = data.get("memory_gb")
    if data.get("memory_mb") is None and isinstance(gb, int | float) and not isinstance(gb, bool):
        data = {**data, "memory_mb": round(gb * 1024)}
    return _typed(_CONFIG, _values(_CONFIG_KEYS, ConfigEventV1, data))


def _progress(data: Mapping[str, object]) -> TrainerProgressMetricsV1:
    return _typed(_PROGRESS, _values(_PROGRESS_KEYS, ProgressEventV1, data))


def _completed(data: Mapping[str, object]) -> TrainerCompletedMetricsV1:
    return _typed(_COMPLETED, _values(_COMPLETED_KEYS, CompletedEventV1, data))


def _seed_event(data: Mapping[str, object]) -> TrainerMetricsEventV1:
    kind = data.get("type")
    if kind == "trainer.metrics.config.v1":
        return _config(data)
    if kind == "trainer.metrics.progress.v1":
        return _progress(data)
    if kind == "trainer.metrics.completed.v1":
        return _completed(data)
    error = f"not a trainer metrics event type: {kind!r}"
    raise _refusal([{"field": "type", "error": error}])


def make_config_event(
    *,
    job_id: str,
    user_id: int,
    model_family: str,
    model_size: str,
    total_epochs: int,
    queue: str,
    cpu_cores: int | None = None,
    memory_mb: int | None = None,
    optimal_threads: int | None = None,
    optimal_workers: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
) -> TrainerConfigV1:
    """A config event; the optional fields given as None are left out."""
    return _config(
        {
            "type": "trainer.metrics.config.v1",
            "job_id": job_id,
            "user_id": user_id,
            "model_family": model_family,
            "model_size": model_size,
            "total_epochs": total_epochs,
            "queue": queue,
            "cpu_cores": cpu_cores,
            "memory_mb": memory_mb,
            "optimal_threads": optimal_threads,
            "optimal_workers": optimal_workers,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
        }
    )


def make_progress_metrics_event(
    *,
    job_id: str,
    user_id: int,
    epoch: int,
    total_epochs: int,
    step: int,
    train_loss: float,
    train_ppl: float,
    grad_norm: float,
    samples_per_sec: float,
    val_loss: float | None = None,
    val_ppl: float | None = None,
) -> TrainerProgressMetricsV1:
    """A progress event; ``val_loss``/``val_ppl`` are left out when None."""
    return _progress(
        {
            "type": "trainer.metrics.progress.v1",
            "job_id": job_id,
            "user_id": user_id,
            "epoch": epoch,
            "total_epochs": total_epochs,
            "step": step,
            "train_loss": train_loss,
            "train_ppl": train_ppl,
            "grad_norm": grad_norm,
            "samples_per_sec": samples_per_sec,
            "val_loss": val_loss,
            "val_ppl": val_ppl,
        }
    )


def make_completed_metrics_event(
    *, job_id: str, user_id: int, test_loss: float, test_ppl: float, artifact_path: str
) -> TrainerCompletedMetricsV1:
    """A completed event."""
    return _completed(
        {
            "type": "trainer.metrics.completed.v1",
            "job_id": job_id,
            "user_id": user_id,
            "test_loss": test_loss,
            "test_ppl": test_ppl,
            "artifact_path": artifact_path,
        }
    )


def encode_trainer_metrics_event(event: TrainerMetricsEventV1) -> str:
    """The event as compact JSON text, its values checked first."""
    return _EVENT.dump_json(_seed_event(event)).decode()


def decode_trainer_metrics_event(payload: str | bytes) -> TrainerMetricsEventV1:
    """A seed-shaped event, or one of this service's config, progress or completed events, as
    the seed's dict. Raises ModelTrainerError for anything else (another event type, a value
    out of bounds, a completed event whose test_loss is null, text that is not JSON)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _seed_event(_parse_json(data, ModelTrainerErrorCode.COMMAND_UNDECODABLE))


def is_config(event: TrainerMetricsEventV1) -> TypeGuard[TrainerConfigV1]:
    return event["type"] == "trainer.metrics.config.v1"


def is_progress_metrics(event: TrainerMetricsEventV1) -> TypeGuard[TrainerProgressMetricsV1]:
    return event["type"] == "trainer.metrics.progress.v1"


def is_completed_metrics(event: TrainerMetricsEventV1) -> TypeGuard[TrainerCompletedMetricsV1]:
    return event["type"] == "trainer.metrics.completed.v1"


__all__ = [
    "TrainerCompletedMetricsV1",
    "TrainerConfigV1",
    "TrainerMetricsEventType",
    "TrainerMetricsEventV1",
    "TrainerProgressMetricsV1",
    "decode_trainer_metrics_event",
    "encode_trainer_metrics_event",
    "is_completed_metrics",
    "is_config",
    "is_progress_metrics",
    "make_completed_metrics_event",
    "make_config_event",
    "make_progress_metrics_event",
]
