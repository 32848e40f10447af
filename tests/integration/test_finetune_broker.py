"""LoRA fine-tuning through the real broker, several jobs through one service start: local
Qwen2, Llama and GPT-2 folders on chat JSONL, chat Parquet and instruction JSONL, each to its
completed event and an adapter that loads over its base; the held-out answers in a completed
event; and the typed answers to a folder without a chat template and to a bad record."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
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
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tests.engine.finetune_helpers import chat_folder, conversations, instructions, write_jsonl

pytestmark = pytest.mark.kafka


@pytest.fixture
def service(stack: Stack) -> Iterator[ServiceProcess]:
    chat_folder(stack.data_root, "qwen2", "qwen")
    chat_folder(stack.data_root, "llama", "llama")
    chat_folder(stack.data_root, "gpt2", "gpt2", template=False)  # plain prompt + response
    chat_folder(stack.data_root, "qwen2", "plain", template=False)
    write_jsonl(stack.data_root, "chat.jsonl", conversations())
    write_jsonl(stack.data_root, "qa.jsonl", instructions())
    pq.write_table(pa.Table.from_pylist(conversations()), stack.data_root / "chat.parquet")
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


def _job(
    job_id: str, folder: str, corpus: str, data: Mapping[str, object] | None = None, **extra: object
) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": job_id,
            "user_id": 7,
            "backend": "pretrained",
            "model": {"path": f"models/{folder}", "block_size": 128},
            "data": {"corpus_path": corpus, "format": "chat", **(data or {})},
            "adapter": {"kind": "lora", "r": 4, "alpha": 8},
            "training": {"max_steps": 6, "batch_size": 4, "eval_every": 3, "eval_batches": 2},
            "progress": {"every_steps": 2},
            **extra,
        }
    )


QA = {"format": "instruction", "records": {"prompt_field": "question", "response_field": "answer"}}
IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 8, 61]])


async def test_lora_jobs_through_the_broker(stack: Stack, watcher: EventWatcher) -> None:
    generate = {"prompts": 2, "max_new_tokens": 6}
    async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
        for job in (
            _job("ft-qwen", "qwen", "chat.jsonl", generate=generate),
            _job("ft-llama", "llama", "chat.parquet", adapter={"r": 4, "merge": True}),
            _job("ft-gpt2", "gpt2", "qa.jsonl", QA),
            _job("ft-plain", "plain", "chat.jsonl"),
            _job("ft-bad", "qwen", "bad.jsonl"),
        ):
            await sender.send(job)
    completed: dict[str, CompletedEventV1] = {}
    for job_id in ("ft-qwen", "ft-llama", "ft-gpt2"):
        events = await watcher.until_terminal(job_id, timeout_s=500)
        config = next(e for e in events if isinstance(e, ConfigEventV1))
        assert config.loss_tokens is not None
        assert 0 < config.loss_tokens < config.train_tokens
        assert config.packing_efficiency is not None
        assert config.packing_efficiency > 0.5
        done = events[-1]
        assert isinstance(done, CompletedEventV1), done
        assert done.steps == 6
        completed[job_id] = done
    with torch.no_grad():
        adapted, tuned = {}, {}
        for job_id, folder in (("ft-qwen", "qwen"), ("ft-llama", "llama"), ("ft-gpt2", "gpt2")):
            base = AutoModelForCausalLM.from_pretrained(str(stack.data_root / "models" / folder))
            untouched = base(input_ids=IDS).logits
            tuned[job_id] = PeftModel.from_pretrained(base, completed[job_id].artifact_path)
            adapted[job_id] = tuned[job_id](input_ids=IDS).logits
            assert not torch.allclose(adapted[job_id], untouched, atol=1e-4)  # it trained
        merged = AutoModelForCausalLM.from_pretrained(
            str(Path(completed["ft-llama"].artifact_path) / "merged")
        )
        assert torch.allclose(merged(input_ids=IDS).logits, adapted["ft-llama"], atol=1e-5, rtol=0)

    # The held-out prompts are the test split's records (the last 2 of 40), answered in at
    # most 6 tokens; the other jobs asked for none.
    answers = completed["ft-qwen"].generations
    assert [g.reference for g in answers] == [
        "The wind is kind if the sea is calm.",
        "She said that we shall see the sea.",
    ]
    assert all(g.prompt.endswith("<|im_start|>assistant\n") for g in answers)
    tok = AutoTokenizer.from_pretrained(str(stack.data_root / "models" / "qwen"))
    assert [g.completion for g in answers] == [
        _greedy(tuned["ft-qwen"], tok, g.prompt, 6) for g in answers
    ]
    assert completed["ft-llama"].generations == []

    plain = (await watcher.until_terminal("ft-plain", timeout_s=120))[-1]
    assert isinstance(plain, FailedEventV1)
    assert plain.code == ModelTrainerErrorCode.CHAT_TEMPLATE_NOT_FOUND
    bad = (await watcher.until_terminal("ft-bad", timeout_s=300))[-1]
    assert isinstance(bad, FailedEventV1)
    assert bad.code == ModelTrainerErrorCode.CORPUS_MALFORMED_RECORD
    assert (bad.details["file"], bad.details["line"]) == ("bad.jsonl", 5)


def _greedy(model: PeftModel, tok: PreTrainedTokenizerBase, prompt: str, most: int) -> str:
    """The adapter over its base, decoding greedily the plain way (no cache)."""
    ids: list[int] = tok(prompt, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(most):
            nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return str(tok.decode(new))
