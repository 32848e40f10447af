"""LoRA fine-tuning of a local Qwen2 folder on chat records, through the real broker: the
adapter artifact, the masked-token count in the config event, and the typed answers to a
folder without a chat template and to a bad record."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from local_service import ServiceProcess, Stack
from model_trainer_client import CommandSender, EventWatcher
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerErrorCode,
    SubmitJobV1,
)
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.engine.finetune_helpers import chat_folder, conversations, write_jsonl

pytestmark = pytest.mark.kafka


@pytest.fixture
def service(stack: Stack) -> Iterator[ServiceProcess]:
    chat_folder(stack.data_root, "qwen2", "qwen")
    chat_folder(stack.data_root, "qwen2", "plain", template=False)
    write_jsonl(stack.data_root, "chat.jsonl", conversations())
    write_jsonl(stack.data_root, "bad.jsonl", [*conversations(4), {"messages": []}])
    # transformers and peft load in the worker before it is ready: slow on a loaded machine
    svc = ServiceProcess(stack, worker_preload="pretrained").start(timeout_s=400)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
async def watcher(stack: Stack, service: ServiceProcess) -> AsyncIterator[EventWatcher]:
    async with EventWatcher(stack.bootstrap, stack.events_topic) as w:
        yield w


def _job(job_id: str, folder: str, corpus: str) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": job_id,
            "user_id": 7,
            "backend": "pretrained",
            "model": {"path": f"models/{folder}", "block_size": 128},
            "data": {"corpus_path": corpus, "format": "chat"},
            "adapter": {"kind": "lora", "r": 4, "alpha": 8},
            "training": {"max_steps": 6, "batch_size": 4, "eval_every": 3, "eval_batches": 2},
            "progress": {"every_steps": 2},
        }
    )


async def test_lora_chat_job_through_the_broker(stack: Stack, watcher: EventWatcher) -> None:
    async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
        for job in (
            _job("ft-ok", "qwen", "chat.jsonl"),
            _job("ft-plain", "plain", "chat.jsonl"),
            _job("ft-bad", "qwen", "bad.jsonl"),
        ):
            await sender.send(job)
    ok = await watcher.until_terminal("ft-ok", timeout_s=500)
    config = next(e for e in ok if isinstance(e, ConfigEventV1))
    assert config.loss_tokens is not None
    assert 0 < config.loss_tokens < config.train_tokens
    assert config.packing_efficiency is not None
    assert config.packing_efficiency > 0.5
    done = ok[-1]
    assert isinstance(done, CompletedEventV1)
    folder = Path(done.artifact_path)
    base = AutoModelForCausalLM.from_pretrained(str(stack.data_root / "models" / "qwen"))
    PeftModel.from_pretrained(base, str(folder))  # loads over the base folder

    plain = (await watcher.until_terminal("ft-plain", timeout_s=120))[-1]
    assert isinstance(plain, FailedEventV1)
    assert plain.code == ModelTrainerErrorCode.CHAT_TEMPLATE_NOT_FOUND
    bad = (await watcher.until_terminal("ft-bad", timeout_s=300))[-1]
    assert isinstance(bad, FailedEventV1)
    assert bad.code == ModelTrainerErrorCode.CORPUS_MALFORMED_RECORD
    assert (bad.details["file"], bad.details["line"]) == ("bad.jsonl", 5)
