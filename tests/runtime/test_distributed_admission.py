"""A job of several processes, at acceptance and in the job book (no torch, no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_trainer.book.book import JobBook
from model_trainer.book.effects import Run
from model_trainer.core.admission import admit
from model_trainer.core.memory import MIB, Vocabulary, check_memory, estimate
from model_trainer.settings import Settings
from model_trainer.shell.budgets import check_caps
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1
from pydantic import ValidationError

from .book_helpers import completed, new_book, record, submit

C = ModelTrainerErrorCode


def job(
    backend: str = "llama",
    processes: int = 2,
    strategy: str = "auto",
    *,
    device: str = "cpu",
    batch: int = 8,
    job_id: str = "d",
) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": job_id,
            "user_id": 7,
            "backend": backend,
            "data": {"inline_text": "hello world " * 10},
            "training": {"max_steps": 4, "batch_size": batch, "device": device},
            "resources": {"processes": processes, "strategy": strategy},
        }
    )


def refusal(spec: SubmitJobV1, **kwargs: bool | None) -> ModelTrainerError:
    with pytest.raises(ModelTrainerError) as caught:
        admit(spec, cuda_available=kwargs.get("cuda_available"))
    return caught.value


def test_a_command_without_resources_is_one_process() -> None:
    old = submit("a")  # written before resources existed
    assert (old.resources.processes, old.resources.strategy) == (1, "auto")
    assert "resources" in SubmitJobV1.model_json_schema()["properties"]


def test_the_global_batch_must_split_over_the_processes() -> None:
    with pytest.raises(ValidationError, match="does not split over 3 processes"):
        job(processes=3, batch=8)
    assert job(processes=4, batch=8).resources.processes == 4


def test_backends_without_a_strategy_are_refused_with_their_code() -> None:
    for backend in ["char_lstm"]:
        error = refusal(job(backend, 2, "ddp"))
        assert error.code is C.UNSUPPORTED_BACKEND
        assert error.details["supported"] == []
    for backend in ["gpt2", "llama"]:
        for strategy in ["ddp", "fsdp", "auto"]:
            admit(job(backend, 2, strategy), cuda_available=False)
    admit(job("char_lstm", 1, "ddp"))  # one process: no strategy is needed


def test_several_processes_on_cuda_are_refused() -> None:
    assert refusal(job(device="cuda")).code is C.UNSUPPORTED_BACKEND
    assert refusal(job(device="auto"), cuda_available=True).code is C.UNSUPPORTED_BACKEND
    admit(job(device="auto"), cuda_available=False)


def test_more_processes_than_worker_slots_is_refused(tmp_path: Path) -> None:
    settings = Settings(workers=2, artifacts_root=tmp_path)
    check_caps(job(processes=2), settings)
    with pytest.raises(ModelTrainerError) as caught:
        check_caps(job(processes=4), settings)
    assert caught.value.code is C.RESOURCE_LIMIT_EXCEEDED
    assert caught.value.details == {"field": "resources.processes", "value": 4, "limit": 2}


def _estimate(spec: SubmitJobV1, strategy: str) -> int:
    vocab = Vocabulary(1000, "bpe")
    found = estimate(
        spec, vocabulary=vocab, corpus_bytes=0, device="cpu", precision="fp32", strategy=strategy
    )
    return found.model_bytes


def test_memory_is_estimated_per_process_and_sharded_under_fsdp() -> None:
    big = {"num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8}
    one = SubmitJobV1.model_validate({**job(processes=1).model_dump(), "model": big})
    four = SubmitJobV1.model_validate({**job(processes=4).model_dump(), "model": big})
    ddp_one, ddp_four, fsdp_four = (
        _estimate(one, "ddp"),
        _estimate(four, "ddp"),
        _estimate(four, "fsdp"),
    )
    assert ddp_four < ddp_one  # a quarter of the batch's activations and logits per process
    assert fsdp_four < ddp_four  # a quarter of the optimizer state (the weights whole in a step)
    # auto: ddp while a replica fits, fsdp when only a shard does
    roomy = check_memory(
        four,
        10_000,
        vocabulary=Vocabulary(1000, "bpe"),
        corpus_bytes=0,
        device="cpu",
        precision="fp32",
    )
    assert roomy.strategy == "ddp"
    tight_mb = (fsdp_four + ddp_four) // 2 // MIB + 96  # between the two, with the runtime's share
    tight = check_memory(
        four,
        tight_mb,
        vocabulary=Vocabulary(1000, "bpe"),
        corpus_bytes=0,
        device="cpu",
        precision="fp32",
    )
    assert (tight.strategy, tight.processes) == ("fsdp", 4)


def test_a_two_process_job_takes_two_slots_and_waits_its_turn() -> None:
    book: JobBook = new_book(slots=2)
    first = book.command(record(submit("one"), 0), now=0)
    assert [e.job_id for e in first if isinstance(e, Run)] == ["one"]
    pair = book.command(record(job(job_id="pair"), 1), now=0)
    assert [e for e in pair if isinstance(e, Run)] == []  # one slot free: it waits queued
    later = book.command(record(submit("later"), 2), now=0)
    assert [e for e in later if isinstance(e, Run)] == []  # and nothing overtakes it
    ended = book.ended("one", 1, completed("one"), now=1)
    runs = [e for e in ended if isinstance(e, Run)]
    assert [(r.job_id, r.order.processes) for r in runs] == [("pair", 2)]
    assert book.free_slots() == 0
