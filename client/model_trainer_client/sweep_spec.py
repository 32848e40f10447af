"""SWEEP.yaml, validated: a base job, a search space, a sampler, a budget, an objective and a
pruner. Pure: reading the file is the only I/O (:func:`load_sweep`), and every problem comes
back as one line (:class:`SweepSpecError`).

A trial is the base job with the sampled values put in at dotted paths of the submit command
(``training.learning_rate``, ``model.hidden_size``), under the job id ``<name>-trial-<n>``,
labelled ``sweep``, ``sweep_digest``, ``trial`` and ``hp.<path>`` (the value as JSON), so the
sweep can be read back from Kafka alone, and ``experiment=<name>`` unless the base job has an
``experiment`` label (``export mlflow`` puts a sweep's runs in one experiment).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from model_trainer_contracts import SubmitJobV1
from model_trainer_contracts.commands import MAX_LABELS
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    model_validator,
)

Scalar = bool | int | float | str
SWEEP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ParamPath = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
]
# What the sweep sets on every trial itself: the space may not vary them.
RESERVED_PATHS = ("type", "job_id", "labels")
SWEEP_LABELS = ("sweep", "sweep_digest", "trial")
EXPERIMENT = "experiment"  # the trials' label, unless the base job sets its own
HP_PREFIX = "hp."
MAX_LABEL_KEY = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FloatParam(_Strict):
    """A float between ``low`` and ``high`` (both included), on a log scale with ``log``."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        return self


class IntParam(_Strict):
    """An integer between ``low`` and ``high`` (both included), every ``step``."""

    type: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("a log scale needs low > 0 and step 1")
        return self


class ChoiceParam(_Strict):
    """One of ``values`` (the only kind a grid takes)."""

    type: Literal["choice"] = "choice"
    values: list[Scalar] = Field(min_length=1, max_length=1000)


Param = Annotated[FloatParam | IntParam | ChoiceParam, Field(discriminator="type")]


def _param_type(data: object) -> object:
    """A parameter may leave ``type`` out: ``values`` is a choice, integer bounds an int
    range, other bounds a float range."""
    if not isinstance(data, dict) or "type" in data:
        return data
    if "values" in data:
        return {**data, "type": "choice"}
    bounds = [data.get("low"), data.get("high")]
    whole = all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
    return {**data, "type": "int" if whole else "float"}


class Sampler(_Strict):
    """How the next trial's values are chosen: ``grid`` (every combination of the choices, in
    order), ``random``, or ``tpe`` (Optuna's Tree-structured Parzen Estimator, random for its
    first ``startup_trials``)."""

    kind: Literal["tpe", "random", "grid"] = "tpe"
    startup_trials: int = Field(4, ge=0, le=10_000, description="tpe: random trials first.")


class Budget(_Strict):
    trials: int = Field(
        10, ge=1, le=10_000, description="Trials in all (a grid: at most its size)."
    )
    parallelism: int = Field(1, ge=1, le=256, description="Trials queued or running at once.")


class Objective(_Strict):
    """``val_loss``: the trial's best evaluation (its completed event's ``best_val_loss``);
    ``test_loss``: its final test loss."""

    metric: Literal["val_loss", "test_loss"] = "val_loss"
    direction: Literal["minimize", "maximize"] = "minimize"


class Pruner(_Strict):
    """Stop bad trials early, from the val_loss of their evaluations: ``median`` (Optuna's
    MedianPruner: worse than the median of the completed trials at the same step), ``halving``
    (its SuccessiveHalvingPruner) or ``none``."""

    kind: Literal["median", "halving", "none"] = "median"
    startup_trials: int = Field(
        2, ge=0, le=10_000, description="median: trials to complete before any is pruned."
    )
    warmup_steps: int = Field(
        0, ge=0, le=10_000_000, description="median: steps a trial runs before it may be pruned."
    )
    min_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="halving: the first rung's steps (None: Optuna's)."
    )
    reduction_factor: int = Field(3, ge=2, le=100, description="halving: 1/N promoted per rung.")


class SweepSpec(_Strict):
    """The sweep, as SWEEP.yaml gives it (``base``: the submit command without its job id)."""

    name: Annotated[str, StringConstraints(pattern=SWEEP_NAME_PATTERN)]
    base: dict[str, JsonValue]
    space: dict[ParamPath, Param] = Field(min_length=1, max_length=16)
    sampler: Sampler = Field(default_factory=Sampler)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    budget: Budget = Field(default_factory=Budget)
    objective: Objective = Field(default_factory=Objective)
    pruner: Pruner = Field(default_factory=Pruner)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: object) -> object:
        """``sampler: grid`` for ``sampler: {kind: grid}``; parameters without ``type``."""
        if not isinstance(data, dict):
            return data
        fixed = dict(data)
        if isinstance(fixed.get("sampler"), str):
            fixed["sampler"] = {"kind": fixed["sampler"]}
        if isinstance(fixed.get("pruner"), str):
            fixed["pruner"] = {"kind": fixed["pruner"]}
        space = fixed.get("space")
        if isinstance(space, dict):
            fixed["space"] = {path: _param_type(param) for path, param in space.items()}
        return fixed

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for path in self.space:
            if path.split(".")[0] in RESERVED_PATHS:
                raise ValueError(f"space: {path} is set by the sweep, not searched")
            if len(HP_PREFIX + path) > MAX_LABEL_KEY:
                raise ValueError(f"space: {path} is too long for a label key (max 60)")
        if "job_id" in self.base:
            raise ValueError(f"base: job_id is set by the sweep ({self.name}-trial-<n>)")
        labels = self.base.get("labels", {})
        if not isinstance(labels, dict):
            raise ValueError("base: labels must be a mapping")
        taken = [key for key in labels if key in SWEEP_LABELS or key.startswith(HP_PREFIX)]
        if taken:
            raise ValueError(f"base: labels {', '.join(taken)} are the sweep's own")
        own = len(SWEEP_LABELS) + (EXPERIMENT not in labels)
        if len(labels) + own + len(self.space) > MAX_LABELS:
            raise ValueError(
                f"base: {len(labels)} labels, {own} of the sweep and one per "
                f"parameter ({len(self.space)}) exceed a job's {MAX_LABELS}"
            )
        if self.sampler.kind == "grid":
            ranges = [p for p, param in self.space.items() if not isinstance(param, ChoiceParam)]
            if ranges:
                raise ValueError(f"sampler grid: give values for {', '.join(ranges)}, not a range")
        return self

    @property
    def digest(self) -> str:
        """Short sha256 of the spec: trials of another spec under the same name are refused."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def grid(self) -> list[dict[str, Scalar]]:
        """Every combination of the choices, the first parameter's slowest (grid only)."""
        choices = [p.values if isinstance(p, ChoiceParam) else [] for p in self.space.values()]
        return [dict(zip(self.space, combo, strict=True)) for combo in itertools.product(*choices)]

    @property
    def trials(self) -> int:
        """How many trials the sweep runs: the budget, at most the grid's size."""
        if self.sampler.kind == "grid":
            return min(self.budget.trials, len(self.grid()))
        return self.budget.trials

    def job_id(self, n: int) -> str:
        return f"{self.name}-trial-{n}"

    def trial_number(self, job_id: str) -> int | None:
        """``n`` of a trial's job id of this sweep; ``None`` for any other id."""
        prefix = f"{self.name}-trial-"
        tail = job_id.removeprefix(prefix)
        return int(tail) if job_id.startswith(prefix) and tail.isdigit() else None

    def command(self, n: int, params: dict[str, Scalar]) -> SubmitJobV1:
        """Trial ``n``'s submit command; ValidationError when the contracts refuse it."""
        data: dict[str, JsonValue] = json.loads(json.dumps(self.base))
        data.setdefault("type", str(SubmitJobV1.model_fields["type"].default))
        for path, value in params.items():
            _put(data, path, value)
        labels = data.get("labels")
        data["labels"] = {
            EXPERIMENT: self.name,  # export mlflow: a sweep's runs in one experiment
            **(labels if isinstance(labels, dict) else {}),
            "sweep": self.name,
            "sweep_digest": self.digest,
            "trial": str(n),
            **{HP_PREFIX + path: json.dumps(value) for path, value in params.items()},
        }
        data["job_id"] = self.job_id(n)
        return SubmitJobV1.model_validate(data)


def params_of_labels(spec: SweepSpec, labels: dict[str, str]) -> dict[str, Scalar] | None:
    """A trial's values, from its labels; ``None`` when one is missing or unreadable."""
    found: dict[str, Scalar] = {}
    for path in spec.space:
        raw = labels.get(HP_PREFIX + path)
        try:
            value: JsonValue = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        if not isinstance(value, bool | int | float | str):
            return None
        found[path] = value
    return found


def _put(data: dict[str, JsonValue], path: str, value: Scalar) -> None:
    *parents, leaf = path.split(".")
    here = data
    for key in parents:
        child = here.get(key)
        if not isinstance(child, dict):
            child = here[key] = {}
        here = child
    here[leaf] = value


class SweepSpecError(Exception):
    """SWEEP.yaml is unusable; ``lines`` says why, one problem per line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _violations(where: str, exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        loc = _loc(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {loc}: {message}" if loc else f"{where}: {message}")
    return lines


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _read_yaml(path: Path) -> object:
    try:
        loaded: object = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SweepSpecError([f"{path}: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise SweepSpecError([f"{path}: not YAML: {_one_line(exc)}"]) from None
    return loaded


def _corners(spec: SweepSpec) -> list[dict[str, Scalar]]:
    """The lowest and the highest value of every parameter: the trials that test the base
    job against the contracts' limits before anything is sent."""
    low: dict[str, Scalar] = {}
    high: dict[str, Scalar] = {}
    for path, param in spec.space.items():
        if isinstance(param, ChoiceParam):
            low[path], high[path] = param.values[0], param.values[-1]
        else:
            low[path], high[path] = param.low, param.high
    return [low, high] if low != high else [low]


def load_sweep(path: Path) -> SweepSpec:
    """The sweep in ``path``; its ``base`` may be a mapping or a path (relative to the sweep
    file) of a submit command in JSON or YAML. Raises :class:`SweepSpecError`."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise SweepSpecError([f"{path}: expected a mapping (name, base, space, ...)"])
    base = data.get("base")
    if isinstance(base, str):
        data = {**data, "base": _read_yaml(path.parent / base)}
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SweepSpecError(_violations(str(path), exc)) from None
    for corner in _corners(spec):
        try:
            spec.command(0, corner)
        except ValidationError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in corner.items())
            raise SweepSpecError(_violations(f"{path}: base with {shown}", exc)) from None
    return spec
