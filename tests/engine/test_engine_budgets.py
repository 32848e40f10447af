"""Service-wide limits at acceptance (budgets.py): step, evaluation and checkpoint caps, and
disk budgets (per job, for the artifacts root, and the volume's reserve), each refused with
RESOURCE_LIMIT_EXCEEDED and its figures; the disk estimate checked against what a real run
writes; and the service's own acceptance path applying them."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from model_trainer.core.memory import MIB
from model_trainer.engine import run_job
from model_trainer.settings import Settings
from model_trainer.shell.budgets import admit_limits, check_disk, disk_estimate, disk_problem
from model_trainer.shell.service import TrainerService
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1

from tests.engine.engine_helpers import Env, checkpoint_file

C = ModelTrainerErrorCode
GPT2 = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32}


def _settings(env: Env, **overrides: object) -> Settings:
    return Settings.model_validate(
        {
            "data_root": env.data_root,
            "artifacts_root": env.artifacts_root,
            "disk_reserve_mb": 0,
            **overrides,
        }
    )


def _refusal(job: SubmitJobV1, settings: Settings) -> ModelTrainerError:
    with pytest.raises(ModelTrainerError) as err:
        admit_limits(job, settings)
    assert err.value.code == C.RESOURCE_LIMIT_EXCEEDED
    return err.value


def test_caps_on_steps_evaluation_and_checkpoints(env: Env) -> None:
    settings = _settings(env, max_job_steps=100, max_eval_batches=50, min_checkpoint_every=10)
    admit_limits(env.job(training={"max_steps": 100, "checkpoint_every": 10}), settings)
    refused = [
        _refusal(env.job(training=training), settings).details
        for training in (
            {"max_steps": 101},
            {"eval_batches": 51},
            {"checkpoint_every": 1},
        )
    ]
    assert refused == [
        {"field": "training.max_steps", "value": 101, "limit": 100},
        {"field": "training.eval_batches", "value": 51, "limit": 50},
        {"field": "training.checkpoint_every", "value": 1, "limit": 10},
    ]


def test_the_disk_estimate_bounds_what_a_run_writes(env: Env) -> None:
    job = env.job("gpt2", model=GPT2, training={"max_steps": 6})
    found = disk_estimate(job, data_root=env.data_root, artifacts_root=env.artifacts_root)
    done = run_job(dataclasses.replace(env.ctx(job, []), checkpoint_every=2))
    checkpoint = checkpoint_file(env.artifacts_root / job.job_id).stat().st_size
    weights = (Path(done.artifact_path) / "model.safetensors").stat().st_size
    per_checkpoint = found.checkpoints // 3
    # An upper bound, and not a wild one: within 2x of what was written.
    assert checkpoint <= per_checkpoint <= 2 * checkpoint
    assert weights <= found.artifact <= 2 * weights


def test_disk_budgets_refuse_a_job_that_cannot_fit(env: Env) -> None:
    job = env.job("gpt2", model=GPT2)
    need_mb = -(
        -disk_estimate(job, data_root=env.data_root, artifacts_root=env.artifacts_root).total // MIB
    )
    check_disk(job, _settings(env, job_disk_budget_mb=need_mb))

    per_job = _refusal(job, _settings(env, job_disk_budget_mb=need_mb - 1)).details
    assert (per_job["budget"], per_job["estimate_mb"], per_job["budget_mb"]) == (
        "job",
        need_mb,
        need_mb - 1,
    )

    env.artifacts_root.mkdir(parents=True, exist_ok=True)
    (env.artifacts_root / "old").mkdir()
    (env.artifacts_root / "old" / "big.bin").write_bytes(b"\0" * (2 * MIB))
    root = _refusal(job, _settings(env, artifacts_budget_mb=need_mb + 1)).details
    assert (root["budget"], root["used_mb"]) == ("artifacts_root", 2)

    free_mb = shutil.disk_usage(env.root).free // MIB
    volume = _refusal(job, _settings(env, disk_reserve_mb=free_mb)).details
    assert volume["budget"] == "volume"
    assert volume["estimate_mb"] == need_mb


def test_readiness_says_why_when_the_disk_is_nearly_full(env: Env) -> None:
    assert disk_problem(_settings(env)) is None
    free_mb = shutil.disk_usage(env.root).free // MIB
    why = disk_problem(_settings(env, disk_reserve_mb=free_mb + 1024))
    assert why is not None
    assert "under its" in why
    assert "disk_reserve_mb" in why


async def test_the_service_applies_the_limits_at_acceptance(env: Env) -> None:
    service = TrainerService(_settings(env, max_job_steps=5, memory_check=False))
    service._admit(env.job(training={"max_steps": 5}))
    with pytest.raises(ModelTrainerError) as err:
        service._admit(env.job(training={"max_steps": 6}))
    assert err.value.code == C.RESOURCE_LIMIT_EXCEEDED
