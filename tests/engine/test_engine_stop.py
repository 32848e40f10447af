"""Stop requests: checked at every optimizer step (honoured after checkpointing) and between
the phases around training (data preparation, evaluation, saving)."""

from __future__ import annotations

import time

import pytest
from model_trainer.engine import Preempted, StopReason, run_job
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, ProgressEventV1

from tests.engine.engine_helpers import Env, Event, checkpoint_step, losses


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (StopReason.CANCEL, ModelTrainerErrorCode.TRAINING_CANCELLED),
        (StopReason.TIMEOUT, ModelTrainerErrorCode.TRAINING_TIMEOUT),
    ],
)
def test_stop_within_one_step_keeps_a_checkpoint(
    env: Env, reason: StopReason, code: ModelTrainerErrorCode
) -> None:
    job = env.job(training={"max_steps": 50})
    events: list[Event] = []
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, events, stop_at_step=3, reason=reason))
    assert err.value.code == code
    assert err.value.stage == "train"
    assert err.value.details["step"] == 3
    assert max(losses(events)) == 3  # no step ran after the request
    assert checkpoint_step(env.artifacts_root / job.job_id) == 3


def test_deadline_stops_the_run(env: Env) -> None:
    job = env.job(training={"max_steps": 100_000})
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, [], deadline=time.time() + 0.5))
    assert err.value.code == ModelTrainerErrorCode.TRAINING_TIMEOUT
    assert checkpoint_step(env.artifacts_root / job.job_id) >= 0


@pytest.mark.parametrize(
    ("reason", "raised"),
    [(StopReason.CANCEL, ModelTrainerError), (StopReason.SHUTDOWN, Preempted)],
)
def test_stop_during_data_preparation(
    env: Env, reason: StopReason, raised: type[Exception]
) -> None:
    events: list[Event] = []
    with pytest.raises(raised) as err:
        run_job(env.ctx(env.job(), events, stop_at_step=0, reason=reason))
    assert events == []  # stopped before the config event: no model was built
    if isinstance(err.value, ModelTrainerError):
        assert err.value.code == ModelTrainerErrorCode.TRAINING_CANCELLED
        assert err.value.stage == "prepare"


def test_stop_during_evaluation_checkpoints_the_step(env: Env) -> None:
    # evaluation at step 4 runs 500 batches; the request comes with step 4's progress event,
    # which is published after the evaluation, so ask from inside it instead
    job = env.job(training={"max_steps": 50, "eval_every": 4, "eval_batches": 500})
    events: list[Event] = []
    asked = [0]
    ctx = env.ctx(job, events)

    def stop() -> StopReason | None:
        steps = [e.step for e in events if isinstance(e, ProgressEventV1)]
        if steps and steps[-1] >= 3:
            asked[0] += 1
        return StopReason.CANCEL if asked[0] > 1 else None  # stop on the 2nd eval batch

    ctx.stop_requested = stop
    started = time.monotonic()
    with pytest.raises(ModelTrainerError) as err:
        run_job(ctx)
    assert time.monotonic() - started < 30
    assert err.value.code == ModelTrainerErrorCode.TRAINING_CANCELLED
    assert checkpoint_step(env.artifacts_root / job.job_id) == 4
    assert max(losses(events)) == 3  # step 4's progress (with its evaluation) never went out
