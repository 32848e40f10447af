"""Small promises of ``core/`` that no larger test reaches: the stop reason a shared
integer holds, an ended job's checkpoints going, and a failed event whose details are too
many to clip into its bound."""

from __future__ import annotations

from pathlib import Path

from model_trainer.core.envelope import MAX_DETAILS_BYTES, Envelope, failed_event
from model_trainer.core.layout import CHECKPOINTS, release_checkpoints
from model_trainer.core.stop import NO_STOP, StopReason, reason_of
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue


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
