"""Fine-tuning with init_from: weights carried over, incompatibilities refused."""

from __future__ import annotations

import pytest
from model_trainer.engine import run_job
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode

from tests.engine.engine_helpers import Env, Event, losses

C = ModelTrainerErrorCode


@pytest.mark.parametrize("backend", ["char_lstm", "gpt2"])
def test_init_from_continues_from_the_earlier_weights(env: Env, backend: str) -> None:
    base: list[Event] = []
    run_job(
        env.ctx(
            env.job(backend, job_id="base", training={"max_steps": 40, "learning_rate": 3e-3}), base
        )
    )
    fresh: list[Event] = []
    run_job(env.ctx(env.job(backend, job_id="fresh", training={"max_steps": 2}), fresh))
    tuned: list[Event] = []
    job = env.job(backend, job_id="tuned", training={"max_steps": 2}, init_from="base")
    run_job(env.ctx(job, tuned))
    # the tuned run starts where the base run ended, far below a fresh model
    assert losses(tuned)[1] < losses(fresh)[1] - 0.3
    assert losses(tuned)[1] < losses(base)[1]


def test_incompatible_init_from_is_refused(env: Env) -> None:
    run_job(env.ctx(env.job("gpt2", job_id="base", training={"max_steps": 1}), []))
    cases = [
        env.job("gpt2", job_id="wider", model={"n_embd": 32}, init_from="base"),
        env.job("char_lstm", job_id="other", init_from="base"),
        env.job(
            "gpt2", job_id="bpe", tokenizer={"kind": "bpe", "vocab_size": 300}, init_from="base"
        ),
    ]
    for job in cases:
        with pytest.raises(ModelTrainerError) as err:
            run_job(env.ctx(job, []))
        assert err.value.code == C.MODEL_INCOMPATIBLE, job.job_id


def test_unreadable_weights_fail_to_load(env: Env) -> None:
    run_job(env.ctx(env.job("char_lstm", job_id="base", training={"max_steps": 1}), []))
    (env.artifacts_root / "base" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(env.job("char_lstm", job_id="tuned", init_from="base"), []))
    assert err.value.code == C.MODEL_LOAD_FAILED
