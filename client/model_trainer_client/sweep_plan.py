"""What a sweep does next, decided from what Kafka says of its trials: which trial to submit
(Optuna's ask), which to cancel (its pruner, fed the val_loss of each evaluation), what each
ended trial tells the study. Pure: no I/O, no clock; :mod:`.sweep_run` reads the topics,
feeds them in and carries the actions out.

A restarted sweep is rebuilt from its records (:meth:`SweepPlanner.replay`): every trial it
had submitted is asked again with its own values (Optuna's enqueued trials), its evaluations
reported again, and the ended ones told, so no trial runs twice and the study goes on where
it was.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import optuna
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    ProgressEventV1,
    SubmitJobV1,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from pydantic import ValidationError

from .board import JobBoard, JobView, ViewStatus
from .decode import Update
from .sweep_spec import (
    ChoiceParam,
    FloatParam,
    IntParam,
    Scalar,
    SweepSpec,
    params_of_labels,
)

# Optuna logs each trial at INFO and warns that constant_liar is experimental, on stderr: the
# sweep prints its own lines there.
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

PRUNED_BY = "pruned by sweep"


class TrialStatus(StrEnum):
    RUNNING = "running"  # submitted: queued or training
    PRUNING = "pruning"  # its cancel is sent
    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"

    @property
    def live(self) -> bool:
        return self in (TrialStatus.RUNNING, TrialStatus.PRUNING)


@dataclass(frozen=True)
class Submit:
    n: int
    command: SubmitJobV1


@dataclass(frozen=True)
class Cancel:
    n: int
    command: CancelJobV1


Action = Submit | Cancel


@dataclass
class Trial:
    n: int
    job_id: str
    params: dict[str, Scalar]
    status: TrialStatus = TrialStatus.RUNNING
    value: float | None = None  # the objective, once completed
    reported: dict[int, float] = field(default_factory=dict)  # step: val_loss
    note: str = ""  # why it was pruned or failed
    restored: bool = False  # known from Kafka when the sweep started
    optuna_trial: optuna.Trial | None = None

    @property
    def last_val_loss(self) -> float | None:
        return self.reported[max(self.reported)] if self.reported else None


def _distribution(param: FloatParam | IntParam | ChoiceParam) -> BaseDistribution:
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntParam):
        return IntDistribution(param.low, param.high, log=param.log, step=param.step)
    return CategoricalDistribution(param.values)


def _scalar(value: object) -> Scalar:
    if isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"not a parameter value: {value!r}")


def _seed(seed: int, n: int) -> int:
    """Trial ``n``'s sampler seed: the same trial draws the same way after a restart."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{n}".encode()).digest()[:4], "big")


class SweepPlanner:
    """The study and the trials of one sweep. Feed it what the topics hold (:meth:`replay`
    once, then :meth:`observe`); :meth:`plan` says what to submit."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.board = JobBoard()
        self.trials: dict[int, Trial] = {}
        self.distributions = {path: _distribution(p) for path, p in spec.space.items()}
        self._grid = spec.grid() if spec.sampler.kind == "grid" else []
        self.study = optuna.create_study(
            direction=spec.objective.direction,
            sampler=self._sampler(0),
            pruner=self._pruner(),
        )

    def _sampler(self, n: int) -> optuna.samplers.BaseSampler:
        seed = _seed(self.spec.seed, n)
        if self.spec.sampler.kind == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.spec.sampler.startup_trials, constant_liar=True
            )
        return optuna.samplers.RandomSampler(seed=seed)  # grid: every value is enqueued

    def _pruner(self) -> optuna.pruners.BasePruner:
        pruner = self.spec.pruner
        if pruner.kind == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps
            )
        if pruner.kind == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=pruner.min_steps or "auto", reduction_factor=pruner.reduction_factor
            )
        return optuna.pruners.NopPruner()

    # -- what the sweep stands at ------------------------------------------------------------

    def live(self) -> list[Trial]:
        return [trial for trial in self.trials.values() if trial.status.live]

    @property
    def asked(self) -> int:
        return max(self.trials, default=-1) + 1

    @property
    def done(self) -> bool:
        return self.asked >= self.spec.trials and not self.live()

    def best(self) -> Trial | None:
        """The completed trial with the best objective (the lowest n on a tie)."""
        done = [t for t in self.trials.values() if t.status is TrialStatus.COMPLETED]
        scored = [t for t in done if t.value is not None]
        if not scored:
            return None
        sign = 1.0 if self.spec.objective.direction == "minimize" else -1.0
        return min(scored, key=lambda t: (sign * (t.value or 0.0), t.n))

    def view(self, trial: Trial) -> JobView | None:
        return self.board.get(trial.job_id)

    # -- input ---------------------------------------------------------------------------------

    def trial_of(self, job_id: str) -> Trial | None:
        n = self.spec.trial_number(job_id)
        return None if n is None else self.trials.get(n)

    def mine(self, labels: dict[str, str]) -> bool:
        return labels.get("sweep") == self.spec.name

    def foreign_digest(self, labels: dict[str, str]) -> str | None:
        """The digest of another spec, when a record of this sweep's name carries one."""
        digest = labels.get("sweep_digest")
        return digest if self.mine(labels) and digest != self.spec.digest else None

    def replay(
        self, commands: Iterable[SubmitJobV1 | CancelJobV1], events: Iterable[Update]
    ) -> list[Action]:
        """Rebuild the sweep from the commands it sent and its trials' events, as read from
        the topics at start; the cancels now due (trials the pruner stops)."""
        events = [e for e in events if self.spec.trial_number(e.job_id) is not None]
        found: dict[int, dict[str, Scalar]] = {}
        labelled = [(c.job_id, c.labels) for c in commands if isinstance(c, SubmitJobV1)]
        labelled += [(e.job_id, e.labels) for e in events]
        for job_id, labels in labelled:
            n = self.spec.trial_number(job_id)
            params = params_of_labels(self.spec, labels) if self.mine(labels) else None
            if n is not None and params is not None:
                found.setdefault(n, params)
        for n in sorted(found):
            self._start(n, found[n]).restored = True
        for command in commands:
            trial = self.trial_of(command.job_id)
            if isinstance(command, CancelJobV1) and trial and command.reason.startswith(PRUNED_BY):
                trial.status = TrialStatus.PRUNING
                trial.note = command.reason
        for event in events:
            self._fold(event)
        return [cancel for trial in self.live() if (cancel := self._prune(trial)) is not None]

    def observe(self, event: Update) -> tuple[Trial | None, list[Action]]:
        """One event read after the replay: the trial it changed, and the cancel it calls for."""
        trial = self._fold(event)
        if trial is None or not trial.status.live:
            return trial, []
        cancel = self._prune(trial)
        return trial, [] if cancel is None else [cancel]

    # -- output --------------------------------------------------------------------------------

    def plan(self) -> list[Action]:
        """The trials to submit now: while the budget lasts and fewer than ``parallelism`` are
        live. A trial whose command the contracts refuse fails at once, and counts."""
        actions: list[Action] = []
        while self.asked < self.spec.trials and len(self.live()) < self.spec.budget.parallelism:
            n = self.asked
            if self._grid:
                self.study.enqueue_trial(dict(self._grid[n]))
            self.study.sampler = self._sampler(n)
            asked = self.study.ask(self.distributions)
            params = {path: _scalar(asked.params[path]) for path in self.spec.space}
            trial = Trial(n, self.spec.job_id(n), params, optuna_trial=asked)
            self.trials[n] = trial
            try:
                actions.append(Submit(n, self.spec.command(n, params)))
            except ValidationError as exc:
                trial.note = "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
                self._end(trial, TrialStatus.FAILED)
        return actions

    # -- the study -----------------------------------------------------------------------------

    def _start(self, n: int, params: dict[str, Scalar]) -> Trial:
        """A trial submitted before: asked again with its own values."""
        self.study.enqueue_trial(dict(params), skip_if_exists=False)
        asked = self.study.ask(self.distributions)
        trial = Trial(n, self.spec.job_id(n), params, optuna_trial=asked)
        self.trials[n] = trial
        return trial

    def _fold(self, event: Update) -> Trial | None:
        trial = self.trial_of(event.job_id)
        if trial is None:
            return None
        view = self.board.apply(event)
        if view is None or not trial.status.live:
            return trial if view is not None else None
        if isinstance(event, ProgressEventV1) and event.val_loss is not None:
            self._report(trial, event.step, event.val_loss)
        if view.exit_code is not None:
            self._ended(trial, view, event)
        return trial

    def _report(self, trial: Trial, step: int, value: float) -> None:
        # A resumed attempt evaluates its steps again: the first report of a step stands.
        if step in trial.reported or not math.isfinite(value):
            return
        trial.reported[step] = value
        if trial.optuna_trial is not None:
            trial.optuna_trial.report(value, step)

    def _prune(self, trial: Trial) -> Cancel | None:
        if trial.status is not TrialStatus.RUNNING or not trial.reported:
            return None
        if trial.optuna_trial is None or not trial.optuna_trial.should_prune():
            return None
        step = max(trial.reported)
        reason = (
            f"{PRUNED_BY} {self.spec.name}: val_loss {trial.reported[step]:.4f} at step {step} "
            f"({self.spec.pruner.kind} pruner)"
        )
        trial.status = TrialStatus.PRUNING
        trial.note = reason
        return Cancel(trial.n, CancelJobV1(job_id=trial.job_id, reason=reason))

    def _ended(self, trial: Trial, view: JobView, event: Update) -> None:
        shown = view.shown
        if shown is ViewStatus.COMPLETED:
            trial.value = self._objective(view, event)
            trial.note = "" if trial.value is not None else f"no {self.spec.objective.metric}"
            self._end(trial, TrialStatus.COMPLETED)
        elif shown is ViewStatus.CANCELLED and PRUNED_BY in (view.error_message or ""):
            self._end(trial, TrialStatus.PRUNED)
        else:
            trial.note = f"{view.error_code}: {view.error_message}"
            self._end(trial, TrialStatus.FAILED)

    def _objective(self, view: JobView, event: Update) -> float | None:
        if self.spec.objective.metric == "test_loss":
            value = view.test_loss
        elif isinstance(event, CompletedEventV1) and event.best_val_loss is not None:
            value = event.best_val_loss
        else:
            value = min(view.series["val_loss"].points, key=lambda p: p[1], default=(0, None))[1]
        return value if value is not None and math.isfinite(value) else None

    def _end(self, trial: Trial, status: TrialStatus) -> None:
        trial.status = status
        asked, trial.optuna_trial = trial.optuna_trial, None
        if asked is None:
            return
        if status is TrialStatus.COMPLETED and trial.value is not None:
            self.study.tell(asked, trial.value)
        elif status is TrialStatus.PRUNED:
            self.study.tell(asked, state=TrialState.PRUNED)
        else:
            self.study.tell(asked, state=TrialState.FAIL)
