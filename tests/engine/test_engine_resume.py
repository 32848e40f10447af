"""Resuming: a run stopped at step k and resumed matches, loss for loss, one never stopped."""

from __future__ import annotations

import pytest
from model_trainer.core.layout import CHECKPOINTS
from model_trainer.engine import Preempted, StopReason, run_job
from model_trainer.engine.checkpoint import FILE
from model_trainer_contracts import ConfigEventV1, ModelTrainerError, ModelTrainerErrorCode

from tests.engine.engine_helpers import Env, Event, checkpoint_file, checkpoint_step, losses


@pytest.mark.parametrize("backend", ["char_lstm", "gpt2", "llama"])
def test_resumed_run_equals_uninterrupted(env: Env, backend: str) -> None:
    # dropout > 0 makes the result depend on the restored RNG state, not just the weights
    model = {"num_layers": 2, "dropout": 0.1} if backend == "char_lstm" else {"dropout": 0.1}
    training = {"max_steps": 10, "eval_every": 5, "warmup_steps": 2}
    straight: list[Event] = []
    whole = run_job(
        env.ctx(env.job(backend, job_id="whole", model=model, training=training), straight)
    )

    job = env.job(backend, job_id="split", model=model, training=training)
    first: list[Event] = []
    with pytest.raises(Preempted) as stopped:
        run_job(env.ctx(job, first, stop_at_step=4, reason=StopReason.SHUTDOWN))
    assert stopped.value.step == 4
    assert checkpoint_step(env.artifacts_root / "split") == 4

    second: list[Event] = []
    resumed = run_job(env.ctx(job, second, attempt=2))
    config = second[0]
    assert isinstance(config, ConfigEventV1)
    assert config.start_step == 4
    assert losses(first) == {k: v for k, v in losses(straight).items() if k <= 4}
    assert losses(second) == {k: v for k, v in losses(straight).items() if k > 4}
    assert resumed.best_val_loss == whole.best_val_loss
    # the final checkpoint stays until the completed event is published (then it goes)
    assert checkpoint_step(env.artifacts_root / "split") == 10


def test_checkpoint_for_another_spec_is_refused(env: Env) -> None:
    job = env.job(training={"max_steps": 6})
    with pytest.raises(Preempted):
        run_job(env.ctx(job, [], stop_at_step=2, reason=StopReason.SHUTDOWN))
    changed = env.job(training={"max_steps": 6, "learning_rate": 0.01})
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(changed, []))
    assert err.value.code == ModelTrainerErrorCode.CHECKPOINT_CONFIG_MISMATCH
    assert err.value.stage == "prepare"


def test_unreadable_checkpoint_is_corrupt(env: Env) -> None:
    job = env.job()
    (env.artifacts_root / job.job_id / CHECKPOINTS).mkdir(parents=True)
    (env.artifacts_root / job.job_id / CHECKPOINTS / FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, []))
    assert err.value.code == ModelTrainerErrorCode.CHECKPOINT_CORRUPT


def test_damaged_latest_checkpoint_falls_back_to_the_previous(env: Env) -> None:
    job = env.job(job_id="dmg", training={"max_steps": 10})
    for step in (2, 4):  # two stops: checkpoints at step 2, then at step 4
        with pytest.raises(Preempted):
            run_job(env.ctx(job, [], stop_at_step=step, reason=StopReason.SHUTDOWN))
    latest = checkpoint_file(env.artifacts_root / "dmg")
    latest.write_bytes(latest.read_bytes()[:-64] + b"\0" * 64)  # same size, wrong content
    events: list[Event] = []
    run_job(env.ctx(job, events, attempt=3))
    config = events[0]
    assert isinstance(config, ConfigEventV1)
    assert config.start_step == 2
