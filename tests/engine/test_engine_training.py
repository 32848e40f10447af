"""Training behaviour: determinism, schedules, step counts, accumulation, early stopping."""

from __future__ import annotations

import json
import math

import pytest
from model_trainer.engine import run_job
from model_trainer.engine.artifact import read_manifest
from model_trainer.engine.optim import lr_at, warmup_steps
from model_trainer_contracts import (
    ConfigEventV1,
    ProgressEventV1,
    SubmitJobV1,
    TrainingSpec,
    decode_command,
)

from tests.engine.engine_helpers import Env, Event, losses


@pytest.mark.parametrize("backend", ["char_lstm", "gpt2"])
def test_same_seed_same_losses(env: Env, backend: str) -> None:
    runs: list[dict[int, float]] = []
    for job_id, seed in [("a", 5), ("b", 5), ("c", 6)]:
        events: list[Event] = []
        run_job(env.ctx(env.job(backend, job_id=job_id, training={"seed": seed}), events))
        runs.append(losses(events))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert len(runs[0]) == 8


def test_schedule_shapes() -> None:
    spec = TrainingSpec(learning_rate=1.0, min_lr=0.1, warmup_steps=10, schedule="cosine")
    assert lr_at(0, spec, 110) == pytest.approx(1 / 11)
    assert lr_at(10, spec, 110) == pytest.approx(1.0)
    assert lr_at(60, spec, 110) == pytest.approx(0.55)
    assert lr_at(110, spec, 110) == pytest.approx(0.1)
    linear = spec.model_copy(update={"schedule": "linear"})
    assert lr_at(60, linear, 110) == pytest.approx(0.55)
    constant = spec.model_copy(update={"schedule": "constant"})
    assert lr_at(100, constant, 110) == 1.0


def test_warmup_ratio_is_a_fraction_of_the_total_steps() -> None:
    spec = TrainingSpec(learning_rate=1.0, warmup_ratio=0.25, schedule="constant")
    assert [warmup_steps(spec, total) for total in (1, 8, 10, 40)] == [1, 2, 3, 10]
    assert lr_at(0, spec, 40) == pytest.approx(1 / 11)
    assert lr_at(9, spec, 40) == pytest.approx(10 / 11)
    assert lr_at(10, spec, 40) == 1.0
    by_steps = TrainingSpec(learning_rate=1.0, warmup_steps=10, schedule="cosine")
    by_ratio = TrainingSpec(learning_rate=1.0, warmup_ratio=0.25, schedule="cosine")
    assert [lr_at(s, by_ratio, 40) for s in range(40)] == [
        lr_at(s, by_steps, 40) for s in range(40)
    ]
    assert warmup_steps(by_steps, 40) == 10


def test_a_spec_in_hugging_face_names_decodes_and_trains(env: Env) -> None:
    body = env.job().model_dump(mode="json")
    body["training"] = {
        "max_steps": 8,
        "batch_size": 4,
        "device": "cpu",
        "eval_batches": 2,
        "learning_rate": 0.01,
        "gradient_accumulation_steps": 2,
        "warmup_ratio": 0.5,
        "lr_scheduler_type": "linear",
        "max_grad_norm": 0.5,
        "eval_steps": 4,
    }
    body["model"] = {"embedding_dim": 16, "hidden_size": 32, "num_layers": 1, "seq_len": 16}
    job = decode_command(json.dumps(body).encode())
    assert isinstance(job, SubmitJobV1)
    events: list[Event] = []
    done = run_job(env.ctx(job, events))
    progress = [e for e in events if isinstance(e, ProgressEventV1)]
    assert done.steps == 8
    assert [e.step for e in progress if e.val_loss is not None] == [4, 8]
    lrs = [e.learning_rate for e in progress]
    assert lrs[:4] == pytest.approx([0.01 * k / 5 for k in range(1, 5)])  # 4 warmup steps
    assert lrs[4] == pytest.approx(0.01)
    assert lrs[4:] == sorted(lrs[4:], reverse=True)
    written = SubmitJobV1.model_validate(read_manifest(env.artifacts_root / job.job_id)["job"])
    assert written == job
    tr = written.training
    assert (tr.grad_accum_steps, tr.grad_clip, tr.schedule, written.model.block_size) == (
        2,
        0.5,
        "linear",
        16,
    )


def test_epochs_accumulation_and_progress_fields(env: Env) -> None:
    events: list[Event] = []
    job = env.job(
        training={"max_steps": None, "epochs": 0.2, "grad_accum_steps": 2, "eval_every": 3},
        progress={"every_steps": 2},
    )
    done = run_job(env.ctx(job, events))
    config = events[0]
    assert isinstance(config, ConfigEventV1)
    tokens_per_step = 4 * 2 * 16
    assert config.total_steps == math.ceil(0.2 * config.train_tokens / tokens_per_step)
    progress = [e for e in events if isinstance(e, ProgressEventV1)]
    assert progress[-1].step == config.total_steps == done.steps
    assert progress[-1].val_loss is not None
    assert all(e.tokens_per_sec > 0 and e.grad_norm >= 0 for e in progress)
    assert [e.seq for e in events] == list(range(len(events)))
    evals = [e.step for e in progress if e.val_loss is not None]
    assert evals == [
        s for s in range(1, config.total_steps + 1) if s % 3 == 0 or s == config.total_steps
    ]


def test_early_stopping(env: Env) -> None:
    events: list[Event] = []
    job = env.job(
        training={
            "max_steps": 200,
            "eval_every": 1,
            "early_stopping_patience": 1,
            "learning_rate": 1e-6,
            "schedule": "constant",
        }
    )
    done = run_job(env.ctx(job, events))
    assert done.early_stopped
    assert done.steps < 200
