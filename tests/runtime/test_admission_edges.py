"""Admission's refusals that read no file of the job: what a service that does not know
whether its workers have CUDA still refuses, what a backend cannot do, and an artifact whose
manifest names no owner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from model_trainer.core.admission import admit
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1

from .book_helpers import submit

_C = ModelTrainerErrorCode


def _training(**changes: object) -> SubmitJobV1:
    job = submit("placed").model_dump()
    return SubmitJobV1.model_validate({**job, "training": {**job["training"], **changes}})


def _refusal(call: Callable[[], None]) -> ModelTrainerError:
    with pytest.raises(ModelTrainerError) as refused:
        call()
    return refused.value


def test_with_cuda_unknown_only_what_fails_with_and_without_it_is_refused() -> None:
    on_cpu = _training(device="cpu", precision="fp16")
    err = _refusal(lambda: admit(on_cpu, cuda_available=None))
    assert (err.code, err.details) == (
        _C.UNSUPPORTED_BACKEND,
        {"precision": "fp16", "device": "cpu"},
    )
    # fp16 on `auto` runs where the worker has CUDA: left to the worker.
    admit(_training(device="auto", precision="fp16"), cuda_available=None)
    admit(_training(device="cuda", precision="bf16"), cuda_available=None)
    refused = _refusal(lambda: admit(_training(device="cuda"), cuda_available=False))
    assert refused.code is _C.CUDA_NOT_AVAILABLE


def test_a_pretrained_model_is_not_fine_tuned_from_an_artifact() -> None:
    job = SubmitJobV1.model_validate(
        {
            "job_id": "pre",
            "user_id": 7,
            "backend": "pretrained",
            "model": {"backend": "pretrained", "path": "models/tiny"},
            "data": {"inline_text": "hello world " * 10},
            "init_from": "an-earlier-job",
        }
    )
    err = _refusal(lambda: admit(job))
    assert err.code is _C.UNSUPPORTED_BACKEND
    assert "cannot fine-tune (init_from)" in err.message


@pytest.mark.parametrize("manifest", ["not json {", json.dumps(["a list"])])
def test_an_artifact_whose_manifest_names_no_owner_is_no_ones_unless_shared(
    tmp_path: Path, manifest: str
) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "manifest.json").write_text(manifest)
    mine = submit("tuned").model_copy(update={"init_from": "base"})
    err = _refusal(lambda: admit(mine, artifacts_root=tmp_path, shared_artifacts=False))
    assert (err.code, err.details) == (_C.JOB_FORBIDDEN, {"job_id": "base"})
    admit(mine, artifacts_root=tmp_path, shared_artifacts=True)
