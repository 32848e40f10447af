"""What ``export mlflow`` makes of a job's events, before any MLflow call (no server, no
broker): the state its run should hold, and when a run already written must be rebuilt."""

from __future__ import annotations

from model_trainer_client.decode import Update
from model_trainer_client.mlflow_export import JobRun, MlflowExport, MlflowMirror, Written
from model_trainer_contracts import ModelTrainerErrorCode

from .stream import Job


def _fold(events: list[Update], experiment_label: str | None = "experiment") -> JobRun:
    export = MlflowExport("model-trainer", experiment_label)
    folded = [job for job in (export.apply(e) for e in events) if job is not None]
    assert len(export.jobs) == 1
    return folded[-1]


def test_a_resumed_attempt_replaces_the_steps_after_its_checkpoint() -> None:
    job = Job("fold-resumed", total_steps=8)
    events: list[Update] = [job.queued(), job.config()]
    events += [job.progress(step) for step in (2, 4, 6)]
    job.attempt = 2
    events += [job.queued(), job.config(start_step=4), job.progress(6), job.progress(8)]
    events.append(job.completed())
    run = _fold(events + events[3:6])  # read again: ignored
    assert sorted(run.points["train_loss"]) == [2, 4, 6, 8]
    assert run.points["train_loss"][6][1] == int(events[-3].ts.timestamp() * 1000)
    assert sorted(run.points["test_loss"]) == [8]
    assert (run.status, run.tags["status"], run.tags["attempt"]) == ("FINISHED", "completed", "2")
    assert run.params["learning_rate"] == "0.0006"
    assert "start_step" not in run.params
    assert "queue" not in run.params
    assert run.end_ms == int(events[-1].ts.timestamp() * 1000)


def test_a_cancelled_job_is_killed_and_a_rejection_changes_nothing() -> None:
    job = Job("fold-cancel", labels={"experiment": "lr-sweep", "team@x": "nlp"})
    events: list[Update] = [job.queued(), job.config(), job.progress(2)]
    events.append(job.failed(ModelTrainerErrorCode.COMMAND_INVALID, rejected=True))
    run = _fold(events)
    assert (run.status, run.tags["status"]) == ("RUNNING", "running")
    assert "error_code" not in run.tags
    events.append(job.failed(ModelTrainerErrorCode.TRAINING_CANCELLED))
    run = _fold(events)
    assert (run.status, run.tags["status"]) == ("KILLED", "cancelled")
    assert run.tags["error_code"] == "TRAINING_CANCELLED"
    assert run.experiment == "lr-sweep"
    assert run.tags["label.team_x"] == "nlp"  # MLflow refuses some characters in tag keys
    assert _fold(events, experiment_label=None).experiment == "model-trainer"


def _written(points: dict[str, dict[int, tuple[float, int]]], params: dict[str, str]) -> Written:
    return Written("run", "mlflow-artifacts:/0/run/artifacts", params, {}, points, "RUNNING")


def test_a_run_is_rebuilt_only_when_it_holds_what_the_job_no_longer_has() -> None:
    job = JobRun("j", "model-trainer", 0, params={"lr": "0.1"})
    job.points = {"train_loss": {2: (3.0, 1000), 4: (2.5, 2000)}}
    behind = _written({"train_loss": {2: (3.0, 1000)}}, {"lr": "0.1"})
    assert not MlflowMirror._stale(job, behind)  # it lacks step 4: written, not rebuilt
    replaced = _written({"train_loss": {2: (3.0, 1000), 4: (2.7, 1500)}}, {"lr": "0.1"})
    assert MlflowMirror._stale(job, replaced)
    beyond = _written({"train_loss": {2: (3.0, 1000), 6: (2.0, 3000)}}, {})
    assert MlflowMirror._stale(job, beyond)
    other_param = _written({}, {"lr": "0.2"})
    assert MlflowMirror._stale(job, other_param)
