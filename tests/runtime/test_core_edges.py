"""Small promises of ``core/`` that no fast test reached: the stop reason a shared integer
holds, an ended job's checkpoints going, a failed event whose details are too many to clip
into its bound, a corpus folder's size, and a CUDA job's memory refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_trainer.core.admission import admit
from model_trainer.core.envelope import MAX_DETAILS_BYTES, Envelope, failed_event
from model_trainer.core.layout import CHECKPOINTS, release_checkpoints
from model_trainer.core.memory import corpus_bytes
from model_trainer.core.stop import NO_STOP, StopReason, reason_of
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1
from pydantic import JsonValue

from .book_helpers import submit


def test_a_shared_integer_holds_a_stop_reason_or_none() -> None:
    assert [reason_of(v) for v in (NO_STOP, 1, 2, 3, 4, -1)] == [
        None,
        StopReason.CANCEL,
        StopReason.TIMEOUT,
        StopReason.SHUTDOWN,
        None,
        None,
    ]


def test_releasing_checkpoints_keeps_the_artifact_and_may_be_repeated(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINTS / "step-10").mkdir(parents=True)
    (tmp_path / CHECKPOINTS / "step-10" / "model.pt").write_bytes(b"w")
    (tmp_path / "model.pt").write_bytes(b"final")
    release_checkpoints(tmp_path)
    release_checkpoints(tmp_path)  # the second release finds nothing: no error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_details_too_many_to_clip_keep_only_their_size() -> None:
    envelope = Envelope(job_id="j", user_id=1, seq=3, attempt=1, labels={})
    # Each value is small (clipping leaves it), but 5,000 of them exceed the bound.
    details: dict[str, JsonValue] = {f"key-{n:05d}": "x" * 40 for n in range(5000)}
    error = ModelTrainerError(ModelTrainerErrorCode.INTERNAL_ERROR, "boom", details=details)
    event = failed_event(envelope, error)
    assert list(event.details) == ["truncated_from_bytes"]
    size = event.details["truncated_from_bytes"]
    assert isinstance(size, int)
    assert size > MAX_DETAILS_BYTES
    # A few huge values are clipped instead, each kept.
    few: dict[str, JsonValue] = {"a": "y" * 50_000, "b": list(range(30_000))}
    clipped = failed_event(envelope, ModelTrainerError(error.code, "boom", details=few)).details
    assert sorted(clipped) == ["a", "b", "truncated_from_bytes"]
    assert clipped["b"] == list(range(20))


def test_a_corpus_folders_size_leaves_out_hidden_files_and_what_is_not_a_file(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / ".git").mkdir()
    (corpus / "a.txt").write_bytes(b"abc")
    (corpus / "sub" / "b.txt").write_bytes(b"defg")
    (corpus / ".hidden.txt").write_bytes(b"x" * 10)
    (corpus / ".git" / "pack").write_bytes(b"x" * 100)
    (corpus / "gone.txt").symlink_to(tmp_path / "nowhere")  # a link to nothing
    job = SubmitJobV1.model_validate(
        {**submit("sized").model_dump(), "data": {"corpus_path": "corpus"}}
    )
    assert corpus_bytes(job, tmp_path) == 7


def test_a_cuda_jobs_refusal_tells_its_device_estimate_apart_from_the_host() -> None:
    job = submit("on-gpu").model_dump()
    on_gpu = SubmitJobV1.model_validate(
        {**job, "training": {**job["training"], "device": "cuda", "precision": "fp16"}}
    )
    with pytest.raises(ModelTrainerError) as refused:
        admit(on_gpu, cuda_available=True, memory_budget_mb=1)
    details = refused.value.details
    assert refused.value.code is ModelTrainerErrorCode.RESOURCE_LIMIT_EXCEEDED
    assert (details["device"], details["precision"]) == ("cuda", "fp16")
    device_mb, host_mb = details["device_estimate_mb"], details["estimate_mb"]
    assert isinstance(device_mb, int | float)
    assert isinstance(host_mb, int | float)
    assert device_mb > 0
