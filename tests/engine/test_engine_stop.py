"""Stop requests: checked at every optimizer step, honoured after checkpointing."""

from __future__ import annotations

import pytest
from model_trainer.engine import StopReason, run_job
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode

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
        # the 4th check comes after 3 optimizer steps
        run_job(env.ctx(job, events, stop_at_call=4, reason=reason))
    assert err.value.code == code
    assert err.value.stage == "train"
    assert err.value.details["step"] == 3
    assert max(losses(events)) == 3  # no step ran after the request
    assert checkpoint_step(env.artifacts_root / job.job_id) == 3


def test_own_time_budget_stops_the_run(env: Env) -> None:
    job = env.job(training={"max_steps": 100_000})
    job = job.model_copy(update={"timeout_s": 0.5})
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, []))
    assert err.value.code == ModelTrainerErrorCode.TRAINING_TIMEOUT
    assert checkpoint_step(env.artifacts_root / job.job_id) >= 0
