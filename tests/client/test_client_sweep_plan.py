"""The sweep's decisions, in-process (no broker): SWEEP.yaml's validation, which trials the
planner submits, which it prunes, what a restart rebuilds, which trial is best."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from model_trainer_client.cli import app
from model_trainer_client.decode import Update
from model_trainer_client.mlflow_export import MlflowExport
from model_trainer_client.sweep_plan import (
    PRUNED_BY,
    Cancel,
    Submit,
    SweepPlanner,
    TrialStatus,
)
from model_trainer_client.sweep_run import _finish
from model_trainer_client.sweep_spec import SweepSpec, SweepSpecError, load_sweep
from model_trainer_contracts import (
    CancelJobV1,
    FailedEventV1,
    ModelTrainerErrorCode,
    SubmitJobV1,
)
from pydantic import JsonValue
from rich.console import Console
from typer.testing import CliRunner

from .stream import Job

BASE: dict[str, JsonValue] = {
    "user_id": 7,
    "backend": "char_lstm",
    "model": {"embedding_dim": 16, "hidden_size": 32, "num_layers": 1, "block_size": 32},
    "data": {"corpus_path": "corpus.txt"},
    "training": {"max_steps": 40, "batch_size": 8, "eval_every": 10, "eval_batches": 2},
    "labels": {"team": "nlp"},
}
GRID: dict[str, JsonValue] = {
    "name": "lrw",
    "base": BASE,
    "space": {
        "training.learning_rate": {"values": [0.01, 0.003, 1e-5]},
        "model.hidden_size": {"values": [16, 32]},
    },
    "sampler": "grid",
    "budget": {"trials": 6, "parallelism": 2},
    "pruner": {"kind": "median", "startup_trials": 2},
}


def _write(tmp_path: Path, data: object, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _errors(tmp_path: Path, data: object) -> list[str]:
    with pytest.raises(SweepSpecError) as raised:
        load_sweep(_write(tmp_path, data))
    return [line.split(": ", 1)[1] for line in raised.value.lines]


def _trial_job(planner: SweepPlanner, n: int) -> Job:
    trial = planner.trials[n]
    command = planner.spec.command(n, trial.params)
    return Job(trial.job_id, labels=dict(command.labels), total_steps=40)


def _run(job: Job, val_at: dict[int, float], *, until: int = 40) -> list[Update]:
    """queued, config, then a progress event per evaluation with its val_loss."""
    events: list[Update] = [job.queued(), job.config()]
    for step in range(10, until + 1, 10):
        event = job.progress(step, val=True)
        events.append(event.model_copy(update={"val_loss": val_at[step]}))
    return events


def _pruned(job: Job, reason: str) -> FailedEventV1:
    event = job.failed(ModelTrainerErrorCode.TRAINING_CANCELLED)
    return event.model_copy(update={"message": f"cancelled: {reason}"})


def test_sweep_yaml_problems_are_one_line_each(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path, GRID))
    assert [type(p).__name__ for p in spec.space.values()] == ["ChoiceParam", "ChoiceParam"]
    assert spec.trials == 6
    ranges: dict[str, JsonValue] = {
        **GRID,
        "sampler": "tpe",
        "space": {
            "training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "model.hidden_size": {"low": 16, "high": 64, "step": 16},
        },
    }
    kinds = [type(p).__name__ for p in load_sweep(_write(tmp_path, ranges)).space.values()]
    assert kinds == ["FloatParam", "IntParam"]

    assert _errors(tmp_path, {**GRID, "sampler": "grid", "space": ranges["space"]}) == [
        "sampler grid: give values for training.learning_rate, model.hidden_size, not a range"
    ]
    assert _errors(tmp_path, {**GRID, "space": {"training.learning_rat": {"values": [0.1]}}}) == [
        "base with training.learning_rat=0.1: training.learning_rat: Extra inputs are not permitted"
    ]
    assert _errors(tmp_path, {**GRID, "space": {"model.hidden_size": {"values": [16, 0]}}}) == [
        "base with model.hidden_size=0: model.char_lstm.hidden_size: "
        "Input should be greater than or equal to 1"
    ]
    bad_range = {"training.learning_rate": {"low": 0.1, "high": 0.01}}
    assert _errors(tmp_path, {**GRID, "sampler": "random", "space": bad_range}) == [
        "space.training.learning_rate.float: low (0.1) is above high (0.01)"
    ]
    assert _errors(tmp_path, {**GRID, "budget": {"trials": 0}, "name": "no spaces"}) == [
        "name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'",
        "budget.trials: Input should be greater than or equal to 1",
    ]
    assert _errors(tmp_path, {**GRID, "base": {**BASE, "job_id": "x"}}) == [
        "base: job_id is set by the sweep (lrw-trial-<n>)"
    ]
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SweepSpecError) as raised:
        load_sweep(tmp_path / "broken.yaml")
    assert len(raised.value.lines) == 1
    assert "not YAML" in raised.value.lines[0]
    assert "line 2" in raised.value.lines[0]


def test_a_base_job_may_be_a_file_beside_the_sweep(tmp_path: Path) -> None:
    _write(tmp_path, BASE, "job.yaml")
    spec = load_sweep(_write(tmp_path, {**GRID, "base": "job.yaml"}))
    command = spec.command(3, {"training.learning_rate": 0.003, "model.hidden_size": 32})
    assert command.job_id == "lrw-trial-3"
    assert (command.training.learning_rate, command.model.backend) == (0.003, "char_lstm")
    assert command.labels == {
        "experiment": "lrw",
        "team": "nlp",
        "sweep": "lrw",
        "sweep_digest": spec.digest,
        "trial": "3",
        "hp.training.learning_rate": "0.003",
        "hp.model.hidden_size": "32",
    }
    own = {**BASE, "labels": {"experiment": "lr-studies"}}
    labels = SweepSpec.model_validate({**GRID, "base": own}).command(0, {}).labels
    assert labels["experiment"] == "lr-studies"


def test_a_grid_runs_every_point_two_at_a_time_and_the_lowest_val_loss_wins() -> None:
    planner = SweepPlanner(SweepSpec.model_validate(GRID))
    first = planner.plan()
    assert [(a.n, a.command.job_id) for a in first if isinstance(a, Submit)] == [
        (0, "lrw-trial-0"),
        (1, "lrw-trial-1"),
    ]
    assert [planner.trials[n].params for n in (0, 1)] == [
        {"training.learning_rate": 0.01, "model.hidden_size": 16},
        {"training.learning_rate": 0.01, "model.hidden_size": 32},
    ]
    assert planner.plan() == []  # two live: parallelism 2
    finals = {0: 2.1, 1: 1.9, 2: 2.0, 3: 2.05, 4: 2.2, 5: 2.15}
    for n in range(6):
        job = _trial_job(planner, n)
        vals = {10: 3.0, 20: 2.6, 30: 2.3, 40: 1.8}  # alike: nothing is pruned
        events = _run(job, vals)
        events.append(job.completed().model_copy(update={"best_val_loss": finals[n]}))
        assert [planner.observe(event)[1] for event in events] == [[]] * 7
        # a trial ends, the next point goes
        assert [a.n for a in planner.plan()] == ([n + 2] if n + 2 < 6 else [])
    assert planner.done
    best = planner.best()
    assert best is not None
    assert (best.n, best.value) == (1, 1.9)
    assert [t.status for t in planner.trials.values()] == [TrialStatus.COMPLETED] * 6
    assert [t.value for t in planner.trials.values()] == [finals[n] for n in range(6)]


def test_a_trial_worse_than_the_median_is_cancelled_naming_the_sweep_and_ends_pruned() -> None:
    planner = SweepPlanner(
        SweepSpec.model_validate({**GRID, "budget": {"trials": 4, "parallelism": 2}})
    )
    planner.plan()
    for n in (0, 1):
        job = _trial_job(planner, n)
        for event in [*_run(job, {10: 3.0, 20: 2.5, 30: 2.2, 40: 2.0}), job.completed()]:
            planner.observe(event)
    assert [a.n for a in planner.plan()] == [2, 3]
    good, bad = _trial_job(planner, 2), _trial_job(planner, 3)
    good_events = _run(good, {10: 2.9, 20: 2.4}, until=20)
    bad_events = _run(bad, {10: 3.1, 20: 3.4}, until=20)
    assert [planner.observe(e)[1] for e in good_events] == [[], [], [], []]
    decided = [planner.observe(e)[1] for e in bad_events]
    assert decided[:2] == [[], []]
    cancel = decided[2][0]  # the first evaluation above the median (3.0 at step 10)
    assert isinstance(cancel, Cancel)
    assert decided[3] == []
    assert cancel.command.job_id == "lrw-trial-3"
    assert cancel.command.reason == f"{PRUNED_BY} lrw: val_loss 3.1000 at step 10 (median pruner)"
    statuses = [planner.trials[n].status for n in (2, 3)]
    assert statuses == [TrialStatus.RUNNING, TrialStatus.PRUNING]
    planner.observe(_pruned(bad, cancel.command.reason))
    # a trial cancelled by someone else failed: it was not pruned
    user = Job(planner.trials[2].job_id, labels=good.labels, seq=good.seq)
    planner.observe(user.failed(ModelTrainerErrorCode.TRAINING_CANCELLED))
    statuses = [planner.trials[n].status for n in (2, 3)]
    assert statuses == [TrialStatus.FAILED, TrialStatus.PRUNED]
    assert planner.done


def test_a_restarted_sweep_reruns_nothing_and_goes_on_where_it_was() -> None:
    spec = SweepSpec.model_validate(GRID)
    first = SweepPlanner(spec)
    commands: list[SubmitJobV1 | CancelJobV1] = []
    events: list[Update] = []

    def step(planner: SweepPlanner) -> None:
        for action in planner.plan():
            commands.append(action.command)

    step(first)
    jobs = {n: _trial_job(first, n) for n in (0, 1)}
    done = [*_run(jobs[0], {10: 3.0, 20: 2.5, 30: 2.2, 40: 2.0}), jobs[0].completed()]
    running = _run(jobs[1], {10: 3.0, 20: 2.6}, until=20)
    for event in done + running:
        first.observe(event)
        events.append(event)
    step(first)  # trial 0 ended: trial 2 is submitted, then the sweep is killed
    assert [c.job_id for c in commands] == ["lrw-trial-0", "lrw-trial-1", "lrw-trial-2"]

    again = SweepPlanner(spec)
    assert again.replay(commands, events) == []
    assert [t.restored for t in again.trials.values()] == [True, True, True]
    assert [t.status for t in again.trials.values()] == [
        TrialStatus.COMPLETED,
        TrialStatus.RUNNING,
        TrialStatus.RUNNING,
    ]
    assert again.trials[2].params == first.trials[2].params
    assert again.trials[1].reported == {10: 3.0, 20: 2.6}
    assert again.plan() == []  # 2 running: nothing new
    for event in [*_run(jobs[1], {10: 0.0, 20: 0.0, 30: 2.3, 40: 2.1})[4:], jobs[1].completed()]:
        again.observe(event)  # its later events; steps 10 and 20 are not reported twice
    assert again.trials[1].reported == {10: 3.0, 20: 2.6, 30: 2.3, 40: 2.1}
    assert [a.command.job_id for a in again.plan()] == ["lrw-trial-3"]
    assert [t.value for t in again.study.trials] == [2.4, 2.4, None, None]


def test_a_cancel_sent_before_a_restart_is_not_sent_again() -> None:
    spec = SweepSpec.model_validate({**GRID, "pruner": {"kind": "median", "startup_trials": 1}})
    first = SweepPlanner(spec)
    commands: list[SubmitJobV1 | CancelJobV1] = [a.command for a in first.plan()]
    job0, job1 = _trial_job(first, 0), _trial_job(first, 1)
    events = [*_run(job0, {10: 2.0}, until=10), job0.completed()]
    events += _run(job1, {10: 3.0}, until=10)
    cancels = [a for e in events for a in first.observe(e)[1]]
    assert [c.command.job_id for c in cancels] == ["lrw-trial-1"]
    commands += [c.command for c in cancels]
    again = SweepPlanner(spec)
    assert again.replay(commands + [a.command for a in first.plan()], events) == []
    assert again.trials[1].status is TrialStatus.PRUNING
    without = SweepPlanner(spec)  # the cancel never reached Kafka: it is sent on restart
    assert [a.command.job_id for a in without.replay(commands[:2], events)] == ["lrw-trial-1"]


def test_random_and_tpe_draw_within_bounds_and_the_same_way_again() -> None:
    space = {
        "training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "model.hidden_size": {"low": 16, "high": 64, "step": 16},
    }
    for sampler in ("random", "tpe"):
        spec = SweepSpec.model_validate(
            {**GRID, "sampler": sampler, "space": space, "budget": {"trials": 3, "parallelism": 3}}
        )
        drawn = [
            [t.params for t in p.trials.values()]
            for p in (SweepPlanner(spec), SweepPlanner(spec))
            if p.plan()
        ]
        assert drawn[0] == drawn[1]
        assert len({str(p) for p in drawn[0]}) == 3
        for params in drawn[0]:
            lr, width = params["training.learning_rate"], params["model.hidden_size"]
            assert isinstance(lr, float)
            assert 1e-4 <= lr <= 1e-2
            assert width in (16, 32, 48, 64)


def test_a_trial_the_contracts_refuse_fails_at_once_and_counts() -> None:
    base = {**BASE, "backend": "gpt2", "model": {"n_embd": 32, "n_head": 4}}
    spec = SweepSpec.model_validate(
        {
            **GRID,
            "base": base,
            "space": {"model.n_head": {"values": [4, 3]}},
            "budget": {"trials": 2, "parallelism": 2},
        }
    )
    planner = SweepPlanner(spec)
    actions = planner.plan()
    assert [a.n for a in actions] == [0]
    assert planner.trials[1].status is TrialStatus.FAILED
    assert "n_embd (32) must be a multiple of n_head (3)" in planner.trials[1].note


def test_the_command_says_each_problem_in_one_line_and_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, {**GRID, "budget": {"trials": 0}, "name": "no spaces"})
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{path}: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$'",
        f"{path}: budget.trials: Input should be greater than or equal to 1",
    ]


def test_successive_halving_stops_a_trial_outside_the_top_of_its_rung() -> None:
    pruner = {"kind": "halving", "min_steps": 10, "reduction_factor": 2}
    planner = SweepPlanner(SweepSpec.model_validate({**GRID, "pruner": pruner}))
    planner.plan()
    good, bad = _trial_job(planner, 0), _trial_job(planner, 1)
    assert [planner.observe(e)[1] for e in _run(good, {10: 2.0}, until=10)] == [[]] * 3
    decided = [a for e in _run(bad, {10: 3.0}, until=10) for a in planner.observe(e)[1]]
    assert [type(a) for a in decided] == [Cancel]
    assert [(a.n, a.command.reason) for a in decided if isinstance(a, Cancel)] == [
        (1, f"{PRUNED_BY} lrw: val_loss 3.0000 at step 10 (halving pruner)")
    ]


def test_the_summary_names_the_best_trial_and_its_artifact() -> None:
    planner = SweepPlanner(
        SweepSpec.model_validate({**GRID, "budget": {"trials": 2, "parallelism": 2}})
    )
    planner.plan()
    for n, best in ((0, 2.2), (1, 2.1)):
        job = _trial_job(planner, n)
        events = _run(job, {10: 3.0, 20: 2.5, 30: 2.3, 40: 2.2})
        events.append(job.completed().model_copy(update={"best_val_loss": best}))
        for event in events:
            planner.observe(event)
    text, data = Console(record=True, width=300), Console(record=True, width=300)
    assert _finish(planner, Console(file=io.StringIO()), text, as_json=False) == 0
    assert text.export_text().splitlines() == [
        "best trial 1 lrw-trial-1: val_loss 2.1000 "
        "[training.learning_rate=0.01 model.hidden_size=32]",
        "artifact: /artifacts/lrw-trial-1",
    ]
    assert _finish(planner, Console(file=io.StringIO()), data, as_json=True) == 0
    summary = json.loads(data.export_text())
    assert summary["best"]["job_id"] == "lrw-trial-1"
    assert [(t["trial"], t["status"], t["val_loss"]) for t in summary["trials"]] == [
        (0, "completed", 2.2),
        (1, "completed", 2.1),
    ]


def test_export_mlflow_puts_a_sweeps_trials_in_one_experiment_tagged_with_their_values() -> None:
    planner = SweepPlanner(SweepSpec.model_validate(GRID))
    planner.plan()
    export = MlflowExport("model-trainer", "experiment")
    for n in (0, 1):
        for event in _run(_trial_job(planner, n), {10: 3.0}, until=10):
            export.apply(event)
    runs = [export.jobs[f"lrw-trial-{n}"] for n in (0, 1)]
    assert [run.experiment for run in runs] == ["lrw", "lrw"]
    assert [run.tags["label.hp.model.hidden_size"] for run in runs] == ["16", "32"]
    assert [run.tags["label.sweep"] for run in runs] == ["lrw", "lrw"]
