"""Admission without torch: what the service refuses before a job is queued."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from model_trainer.core.admission import admit
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1

from .book_helpers import submit


def _artifact(root: Path, job_id: str, user_id: int) -> None:
    folder = root / job_id
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"job": {"user_id": user_id}}))
    (folder / "tokenizer.json").write_text("{}")


def _finetune(job_id: str, user_id: int, init_from: str) -> SubmitJobV1:
    return submit(job_id).model_copy(update={"user_id": user_id, "init_from": init_from})


def test_another_users_artifact_is_forbidden_unless_shared(tmp_path: Path) -> None:
    _artifact(tmp_path, "base", user_id=1)
    admit(_finetune("mine", 1, "base"), artifacts_root=tmp_path, shared_artifacts=False)
    with pytest.raises(ModelTrainerError) as refused:
        admit(_finetune("theirs", 2, "base"), artifacts_root=tmp_path, shared_artifacts=False)
    assert refused.value.code is ModelTrainerErrorCode.JOB_FORBIDDEN
    assert refused.value.http_status == 403
    admit(_finetune("theirs", 2, "base"), artifacts_root=tmp_path, shared_artifacts=True)


def test_another_users_tokenizer_is_forbidden(tmp_path: Path) -> None:
    _artifact(tmp_path, "tok", user_id=1)
    job = SubmitJobV1.model_validate(
        {**submit("t").model_dump(), "user_id": 2, "tokenizer": {"kind": "job", "job_id": "tok"}}
    )
    with pytest.raises(ModelTrainerError) as refused:
        admit(job, artifacts_root=tmp_path, shared_artifacts=False)
    assert refused.value.code is ModelTrainerErrorCode.JOB_FORBIDDEN


def test_refusals_are_fast_and_need_no_torch(tmp_path: Path) -> None:
    big = SubmitJobV1.model_validate(
        {
            **submit("big").model_dump(),
            "backend": "gpt2",
            "model": {"backend": "gpt2", "n_layer": 48, "n_embd": 8192, "n_head": 64},
        }
    )
    started = time.perf_counter()
    with pytest.raises(ModelTrainerError) as refused:
        admit(big, data_root=tmp_path, artifacts_root=tmp_path)
    assert time.perf_counter() - started < 0.1
    assert refused.value.code is ModelTrainerErrorCode.INVALID_MODEL_SIZE


def test_the_service_side_imports_no_torch() -> None:
    probe = (
        "import sys, model_trainer.shell.service, model_trainer.book.book, "
        "model_trainer.core.admission; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("a" * 300, ModelTrainerErrorCode.PATH_NOT_ALLOWED),
        ("corpus\x00.txt", ModelTrainerErrorCode.PATH_NOT_ALLOWED),
        ("loop-a/corpus.txt", ModelTrainerErrorCode.PATH_NOT_ALLOWED),
    ],
    ids=["300-byte-name", "nul-byte", "symlink-loop"],
)
def test_what_the_os_says_of_a_path_is_a_typed_refusal(
    tmp_path: Path, path: str, code: ModelTrainerErrorCode
) -> None:
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    job = SubmitJobV1.model_validate(
        {"job_id": "j", "user_id": 1, "backend": "char_lstm", "data": {"corpus_path": path}}
    )
    with pytest.raises(ModelTrainerError) as refused:
        admit(job, data_root=tmp_path)
    assert refused.value.code is code
