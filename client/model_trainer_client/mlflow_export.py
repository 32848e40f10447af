"""``export mlflow``: the events topic mirrored into MLflow, one run per job.

Each job's events are folded into the run it should be (:class:`JobRun`: params, metric points
by key and step, tags, status), and the MLflow run is then brought to that state
(:class:`MlflowMirror`), writing only what it lacks. The export is idempotent because it
reconciles rather than appends: its runs are found again by their ``model_trainer.job_id``
tag, a point already there is not logged again, and a second export, or one after a kill,
writes nothing it wrote before. A resumed attempt replaces the steps after the one it resumed
from; MLflow cannot delete a metric point, so a run that already holds replaced points is
rebuilt (a fresh run with the job's current state; the old one deleted), as TensorBoard's
export purges them.

MLflow (the client's ``mlflow`` extra) is imported on first use: it takes seconds.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    EventBase,
    FailedEventV1,
    ModelTrainerErrorCode,
    ProgressEventV1,
    QueuedEventV1,
)
from rich.console import Console

from .decode import Update, is_rejection
from .readers import LiveTail
from .settings import ClientSettings

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

JOB_ID_TAG = "model_trainer.job_id"
DEFAULT_EXPERIMENT = "model-trainer"
ENVELOPE = set(EventBase.model_fields)
# Attempt-specific or already a tag: not part of the job's resolved config.
NOT_PARAMS = {"start_step", "queue", "backend"}
PROGRESS_METRICS = (
    "train_loss",
    "train_ppl",
    "val_loss",
    "val_ppl",
    "learning_rate",
    "grad_norm",
    "samples_per_sec",
    "tokens_per_sec",
    "mfu",
)
TEST_METRICS = ("test_loss", "test_ppl", "best_val_loss")
_MAX_TAG_VALUE = 5000
_T = TypeVar("_T")
_BATCH = 900  # log_batch takes at most 1000 metrics, 100 params, 100 tags a call


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def tag_key(name: str) -> str:
    """A label key as an MLflow tag key (alphanumerics, ``_-. /:`` only)."""
    return "label." + re.sub(r"[^\w.\- /:]", "_", name)


@dataclass
class JobRun:
    """What one job's MLflow run should hold, from its events read so far."""

    job_id: str
    experiment: str
    start_ms: int
    params: dict[str, str] = field(default_factory=dict)
    points: dict[str, dict[int, tuple[float, int]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "RUNNING"  # MLflow's RunStatus name
    end_ms: int | None = None
    artifact_path: str | None = None
    last_seq: int = -1

    def apply(self, event: Update) -> None:
        """Fold one event in; events already folded (``seq`` not past the last) are ignored."""
        if event.seq <= self.last_seq or is_rejection(event):
            return
        self.last_seq = event.seq
        self.tags["user_id"] = self.tags["mlflow.user"] = str(event.user_id)
        self.tags["attempt"] = str(event.attempt)
        for key, value in event.labels.items():
            self.tags[tag_key(key)] = value
        if isinstance(event, QueuedEventV1):
            return
        if isinstance(event, ConfigEventV1):
            self._config(event)
        elif isinstance(event, ProgressEventV1):
            for key in PROGRESS_METRICS:
                value = getattr(event, key)
                if isinstance(value, float | int):
                    self.points.setdefault(key, {})[event.step] = (float(value), _ms(event.ts))
        elif isinstance(event, CompletedEventV1):
            for key in TEST_METRICS:
                value = getattr(event, key)
                if isinstance(value, float):
                    self.points.setdefault(key, {})[event.steps] = (value, _ms(event.ts))
            self.tags["artifact_path"] = self.artifact_path = event.artifact_path
            self.tags["manifest_digest"] = event.manifest_digest
            self._end("completed", "FINISHED", event)
        elif isinstance(event, FailedEventV1):
            cancelled = event.code == ModelTrainerErrorCode.TRAINING_CANCELLED
            self.tags["error_code"] = event.code.value
            self.tags["error_message"] = event.message[:_MAX_TAG_VALUE]
            self.tags["error_stage"] = event.stage
            if cancelled:
                self._end("cancelled", "KILLED", event)
            else:
                self._end("failed", "FAILED", event)

    def _config(self, event: ConfigEventV1) -> None:
        self.tags["backend"] = event.backend
        self.tags["status"] = "running"
        self.status, self.end_ms = "RUNNING", None
        for point in self.points.values():  # a resumed attempt replaces the steps after it
            for step in [s for s in point if s > event.start_step]:
                del point[step]
        if not self.params:  # params cannot change in MLflow: the first attempt's config
            fields = event.model_dump(mode="json", exclude=ENVELOPE | NOT_PARAMS)
            self.params = {key: str(value) for key, value in fields.items()}

    def _end(self, status: str, mlflow_status: str, event: EventBase) -> None:
        self.tags["status"] = status
        self.status, self.end_ms = mlflow_status, _ms(event.ts)


@dataclass
class Written:
    """What an MLflow run is known to hold (read once, then kept up to date)."""

    run_id: str
    artifact_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    points: dict[str, dict[int, tuple[float, int]]]
    status: str


@dataclass
class Counts:
    runs_created: int = 0
    runs_rebuilt: int = 0
    points: int = 0
    params: int = 0
    tags: int = 0
    artifacts: int = 0
    versions: int = 0

    def __str__(self) -> str:
        return (
            f"{self.runs_created} runs created, {self.runs_rebuilt} rebuilt, "
            f"{self.points} metric points, {self.params} params, {self.tags} tags, "
            f"{self.artifacts} artifacts, {self.versions} model versions"
        )


def _chunks(items: list[_T], size: int = _BATCH) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowMirror:
    """Brings MLflow runs to the state of :class:`JobRun` s, writing only what is missing."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        register_model: str | None = None,
        log_artifacts: bool = False,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client: MlflowClient = MlflowClient(tracking_uri=tracking_uri)
        self.register_model = register_model
        self.log_artifacts = log_artifacts or register_model is not None
        self.counts = Counts()
        self._experiments: dict[str, str] = {}
        self._written: dict[str, Written] = {}

    def _experiment_id(self, name: str) -> str:
        known = self._experiments.get(name)
        if known is None:
            experiment = self.client.get_experiment_by_name(name)
            known = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(name)
            )
            self._experiments[name] = known
        return known

    def _find(self, job: JobRun) -> Written | None:
        runs = self.client.search_runs(
            [self._experiment_id(job.experiment)],
            filter_string=f"tags.`{JOB_ID_TAG}` = '{job.job_id}'",
            max_results=10,
            order_by=["attributes.start_time DESC"],
        )
        if not runs:
            return None
        run: Run = runs[0]
        points: dict[str, dict[int, tuple[float, int]]] = {}
        for key in run.data.metrics:
            history = self.client.get_metric_history(run.info.run_id, key)
            points[key] = {m.step: (float(m.value), int(m.timestamp)) for m in history}
            if len(points[key]) < len(history):  # a step logged twice: rebuild it
                points[key][-1] = (float("nan"), 0)
        return Written(
            run.info.run_id,
            run.info.artifact_uri or "",
            dict(run.data.params),
            dict(run.data.tags),
            points,
            run.info.status,
        )

    def _create(self, job: JobRun) -> Written:
        run = self.client.create_run(
            self._experiment_id(job.experiment),
            start_time=job.start_ms,
            tags={JOB_ID_TAG: job.job_id},
            run_name=job.job_id,
        )
        self.counts.runs_created += 1
        return Written(run.info.run_id, run.info.artifact_uri or "", {}, {}, {}, "RUNNING")

    def sync(self, job: JobRun) -> None:
        """Write into the job's run what it lacks; rebuild it if it holds replaced points."""
        written = self._written.get(job.job_id)
        if written is None:
            written = self._find(job) or self._create(job)
        if self._stale(job, written):
            self.client.delete_run(written.run_id)
            written = self._create(job)
            self.counts.runs_rebuilt += 1
        self._written[job.job_id] = written
        self._write(job, written)
        if written.status != job.status:
            if job.status == "RUNNING":
                self.client.update_run(written.run_id, status="RUNNING")
            else:
                self.client.set_terminated(written.run_id, job.status, end_time=job.end_ms)
            written.status = job.status
        if job.status == "FINISHED" and self.log_artifacts:
            self._artifact(job, written)

    @staticmethod
    def _stale(job: JobRun, written: Written) -> bool:
        """The run holds a point the job no longer has, or another value at a step."""
        for key, steps in written.points.items():
            wanted = job.points.get(key, {})
            if any(wanted.get(step) != point for step, point in steps.items()):
                return True
        return any(job.params.get(k, v) != v for k, v in written.params.items())

    def _write(self, job: JobRun, written: Written) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics = [
            Metric(key, value, ts, step)
            for key, steps in job.points.items()
            for step, (value, ts) in sorted(steps.items())
            if written.points.get(key, {}).get(step) != (value, ts)
        ]
        params = [Param(k, v) for k, v in job.params.items() if k not in written.params]
        tags = [RunTag(k, v) for k, v in job.tags.items() if written.tags.get(k) != v]
        for metric_chunk in _chunks(metrics):
            self.client.log_batch(written.run_id, metrics=metric_chunk)
        for param_chunk in _chunks(params, 100):
            self.client.log_batch(written.run_id, params=param_chunk)
        for tag_chunk in _chunks(tags, 100):
            self.client.log_batch(written.run_id, tags=tag_chunk)
        for metric in metrics:
            written.points.setdefault(metric.key, {})[metric.step] = (
                metric.value,
                metric.timestamp,
            )
        written.params.update((p.key, p.value) for p in params)
        written.tags.update((t.key, t.value) for t in tags)
        self.counts.points += len(metrics)
        self.counts.params += len(params)
        self.counts.tags += len(tags)

    def _artifact(self, job: JobRun, written: Written) -> None:
        """Log the job's artifact folder (when this machine can read it) and register it."""
        digest = job.tags.get("manifest_digest", "")
        path = Path(job.artifact_path) if job.artifact_path else None
        if written.tags.get("model_trainer.artifact_logged") != digest:
            if path is None or not path.is_dir():
                return  # referenced by its artifact_path tag only
            self.client.log_artifacts(written.run_id, str(path), "model")
            self.client.set_tag(written.run_id, "model_trainer.artifact_logged", digest)
            written.tags["model_trainer.artifact_logged"] = digest
            self.counts.artifacts += 1
        name = self.register_model
        if name is None:
            return
        found = self.client.search_model_versions(
            f"name = '{name}' and run_id = '{written.run_id}'"
        )
        if found:
            return
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        self.client.create_model_version(
            name,
            f"{written.artifact_uri}/model",
            run_id=written.run_id,
            tags={JOB_ID_TAG: job.job_id},
            await_creation_for=0,  # the file store's versions are ready at once
        )
        self.counts.versions += 1


class MlflowExport:
    """Folds events into :class:`JobRun` s; feed it events in the order read."""

    def __init__(self, experiment: str, experiment_label: str | None) -> None:
        self.experiment = experiment
        self.experiment_label = experiment_label
        self.jobs: dict[str, JobRun] = {}

    def apply(self, event: Update) -> JobRun | None:
        """The job the event changed, or ``None`` (a rejection of a command)."""
        if is_rejection(event):
            return None
        job = self.jobs.get(event.job_id)
        if job is None:
            label = event.labels.get(self.experiment_label) if self.experiment_label else None
            job = JobRun(event.job_id, label or self.experiment, _ms(event.ts))
            self.jobs[event.job_id] = job
        job.apply(event)
        return job


async def _sync(mirror: MlflowMirror, jobs: dict[str, JobRun]) -> None:
    for job in jobs.values():
        await asyncio.to_thread(mirror.sync, job)
    jobs.clear()


async def export(
    settings: ClientSettings,
    tracking_uri: str,
    *,
    experiment: str,
    experiment_label: str | None,
    register_model: str | None,
    log_artifacts: bool,
    follow: bool,
    console: Console,
) -> int:
    """Mirror the events topic from the start of its retention: to its end as of now, or
    (``follow``) on and on until interrupted."""
    folded = MlflowExport(experiment, experiment_label)
    async with LiveTail(settings, with_state=False) as tail:
        if not tail.events_found and not follow:
            console.print(f"[yellow]no topic {settings.events_topic}[/yellow]: nothing done")
            return 0
        mirror = await asyncio.to_thread(
            MlflowMirror,
            tracking_uri,
            register_model=register_model,
            log_artifacts=log_artifacts,
        )
        touched: dict[str, JobRun] = {}
        try:
            while follow or not await tail.caught_up():
                for item in await tail.poll():
                    if isinstance(item, EventBase):
                        job = folded.apply(item)
                        if job is not None:
                            touched[job.job_id] = job
                if follow:  # live: after each read; once: at the end, each run written once
                    await _sync(mirror, touched)
                await asyncio.sleep(0)
            await _sync(mirror, touched)
        finally:  # interrupted (--follow ends so) or not, say what was written
            console.print(f"exported {len(folded.jobs)} jobs to {tracking_uri}: {mirror.counts}")
    return 0
