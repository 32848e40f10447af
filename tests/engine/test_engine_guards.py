"""Loss guards: NaN/inf and divergence end the run with their codes.

The faults are injected through the backend hook (``Backend.loss``), the one place a real
backend could produce them; the trainer under test is the real one.
"""

from __future__ import annotations

import math

import pytest
from model_trainer.engine import BaseTrainer, run_job
from model_trainer.engine.backends.char_lstm import CharLstmBackend
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from torch import Tensor, nn

from tests.engine.engine_helpers import Env


class FaultyLstm(CharLstmBackend):
    """char_lstm whose loss is scaled by ``factor`` from the ``after``-th call on."""

    def __init__(self, after: int, factor: float) -> None:
        self.calls, self.after, self.factor = 0, after, factor

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        loss = super().loss(model, x, y)
        return loss * self.factor if self.calls > self.after and model.training else loss


def test_nan_loss_is_detected(env: Env) -> None:
    ctx = env.ctx(env.job(training={"max_steps": 20}), [])
    with pytest.raises(ModelTrainerError) as err:
        BaseTrainer(ctx, FaultyLstm(after=3, factor=math.nan)).run()
    assert err.value.code == ModelTrainerErrorCode.TRAINING_NAN_LOSS
    assert err.value.stage == "train"
    assert err.value.details["step"] == 4


def test_exploding_loss_is_divergence(env: Env) -> None:
    ctx = env.ctx(env.job(training={"max_steps": 40, "eval_every": 100}), [])
    with pytest.raises(ModelTrainerError) as err:
        BaseTrainer(ctx, FaultyLstm(after=20, factor=50.0)).run()
    assert err.value.code == ModelTrainerErrorCode.TRAINING_DIVERGED
    assert err.value.details["step"] == 21


def test_huge_learning_rate_fails_with_a_loss_guard(env: Env) -> None:
    # No injection: AdamW at lr 10 without clipping blows the weights up.
    job = env.job(
        "gpt2",
        training={
            "max_steps": 200,
            "learning_rate": 10.0,
            "grad_clip": None,
            "schedule": "constant",
            "eval_every": 1000,
        },
    )
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, []))
    assert err.value.code in {
        ModelTrainerErrorCode.TRAINING_NAN_LOSS,
        ModelTrainerErrorCode.TRAINING_DIVERGED,
    }
