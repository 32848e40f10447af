"""The job lifecycle's fault paths, on the real broker with real training.

Each test reaches a way the old service broke its promise (one terminal event per accepted
job, nothing lost, nothing run twice): revokes outside a training step, cancels while data is
prepared, refusals that reused a seq, a job_id on a second key, resumes that spent the crash
budget, runs that hang, and a worker killed right after its last word.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest
from aiokafka.partitioner import DefaultPartitioner
from local_service import ServiceProcess, Stack
from model_trainer_client import CommandSender, EventWatcher, is_terminal
from model_trainer_client.kafka import assign_whole_topic, committed_reader, to_record
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerErrorCode,
    QueuedEventV1,
    SubmitJobV1,
    encode,
)

from .flows import (
    assert_seq_contiguous,
    join_group_briefly,
    logged,
    long_job,
    of,
    send,
    until_end,
    wait_for_step,
    wait_log,
)

pytestmark = pytest.mark.kafka
C = ModelTrainerErrorCode


def write_big_corpus(stack: Stack, megabytes: float) -> str:
    """Random words, so a BPE tokenizer takes seconds to train and to encode."""
    rng = random.Random(0)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
        for _ in range(20000)
    ]
    lines = (" ".join(rng.choices(words, k=12)) for _ in range(int(megabytes * 1e6 / 72)))
    (stack.data_root / "big.txt").write_text("\n".join(lines))
    return "big.txt"


GPT2 = "char_lstm,gpt2"  # imported before the worker is ready, as by default in production


def bpe_job(stack: Stack, job_id: str, corpus: str, **training: object) -> SubmitJobV1:
    spec = stack.job(job_id, steps=20)
    spec["backend"] = "gpt2"
    spec["model"] = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32}
    spec["tokenizer"] = {"kind": "bpe", "vocab_size": 2048}
    spec["data"] = {"corpus_path": corpus, "val_fraction": 0.05, "test_fraction": 0.0}
    spec["training"] = {
        "max_steps": 20,
        "batch_size": 4,
        "eval_every": 10,
        "eval_batches": 2,
        **training,
    }
    return SubmitJobV1.model_validate(spec)


async def test_cancel_during_data_preparation_ends_within_five_seconds(stack: Stack) -> None:
    corpus = write_big_corpus(stack, 4)
    svc = ServiceProcess(stack, worker_preload=GPT2).start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, bpe_job(stack, "prep-cx", corpus))
            await wait_log(svc, "job started", timeout_s=60)  # the worker is preparing data
            await asyncio.sleep(1.0)
            sent = time.monotonic()
            await send(stack, CancelJobV1(job_id="prep-cx", reason="test"))
            events = await watcher.until_terminal("prep-cx", timeout_s=30)
            took = time.monotonic() - sent
    finally:
        svc.stop()
    assert not any(isinstance(e, ConfigEventV1) for e in events), "preparation had finished"
    failed = events[-1]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is C.TRAINING_CANCELLED
    assert took < 5.0, f"cancel took {took:.1f}s"


async def test_revoke_during_data_preparation_hands_the_job_back(stack: Stack) -> None:
    corpus = write_big_corpus(stack, 4)
    svc = ServiceProcess(
        stack, instance_id="a", rebalance_timeout_ms="10000", worker_preload=GPT2
    ).start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, bpe_job(stack, "prep-rv", corpus))
            await wait_log(svc, "job started", timeout_s=60)  # the worker is tokenizing
            await join_group_briefly(stack)
            events = await watcher.until_terminal("prep-rv", timeout_s=400)
            await asyncio.sleep(2)  # a second terminal event would show up here
            await watcher.poll()
    finally:
        svc.stop()
    mine = of(watcher, "prep-rv")
    assert [isinstance(e, CompletedEventV1) for e in mine if is_terminal(e)] == [True]
    assert isinstance(events[-1], CompletedEventV1)
    queued = [e for e in mine if isinstance(e, QueuedEventV1)]
    assert [q.reason for q in queued][:2] == ["submitted", "preempted"], "never handed back"
    configs = [e for e in mine if isinstance(e, ConfigEventV1)]
    assert configs[-1].attempt >= 2
    assert_seq_contiguous(mine)


async def test_revoke_during_evaluation_checkpoints_and_resumes(stack: Stack) -> None:
    svc = ServiceProcess(stack, instance_id="a", rebalance_timeout_ms="10000").start()
    job = long_job(stack, "eval-rv", steps=40)
    # evaluations dominate the run (thousands of batches each): the rebalance lands in one
    slow_eval = job.training.model_copy(update={"eval_every": 10, "eval_batches": 4000})
    job = job.model_copy(update={"training": slow_eval})
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, job)
            await wait_for_step(watcher, "eval-rv", 10, timeout_s=120)
            await join_group_briefly(stack)
            events = await watcher.until_terminal("eval-rv", timeout_s=400)
            await asyncio.sleep(2)
            await watcher.poll()
    finally:
        svc.stop()
    mine = of(watcher, "eval-rv")
    assert [isinstance(e, CompletedEventV1) for e in mine if is_terminal(e)] == [True]
    assert isinstance(events[-1], CompletedEventV1)
    configs = [e for e in mine if isinstance(e, ConfigEventV1)]
    assert [c.attempt for c in configs] == sorted({c.attempt for c in configs})
    assert configs[-1].attempt >= 2
    assert configs[1].start_step >= 10, "resumed from scratch: the hand-back lost its checkpoint"
    assert logged(svc, "job handed back"), "the run did not stop in its evaluation"
    assert not logged(svc, "killing a run"), "the run had to be killed"
    assert_seq_contiguous(mine)


def _other_partition_key(job_id: str, partitions: int) -> bytes:
    """A key that lands on another partition than ``job_id`` does."""
    pick = DefaultPartitioner()
    home = pick(job_id.encode(), list(range(partitions)), list(range(partitions)))
    for i in range(1000):
        key = f"elsewhere-{i}".encode()
        if pick(key, list(range(partitions)), list(range(partitions))) != home:
            return key
    raise AssertionError("no key found")


async def test_conflicting_resubmit_and_a_second_key_while_running(stack: Stack) -> None:
    svc = ServiceProcess(stack).start()
    job = long_job(stack, "twice", steps=60)
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, job)
            await wait_for_step(watcher, "twice", 4, timeout_s=120)
            conflicting = job.model_copy(update={"labels": {"changed": "yes"}})
            async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
                await sender.send(conflicting)
                await sender.send_raw(encode(job), key=_other_partition_key("twice", 4))
            events = await until_end(watcher, "twice", timeout_s=300)
            await asyncio.sleep(2)
            await watcher.poll()
        letters = await _dead_letters(stack)
    finally:
        svc.stop()
    mine = of(watcher, "twice")
    assert isinstance(events[-1], CompletedEventV1)
    assert len([e for e in mine if isinstance(e, ConfigEventV1)]) == 1, "the job ran twice"
    rejected = [e for e in mine if isinstance(e, FailedEventV1)]
    assert [e.code for e in rejected] == [C.JOB_ID_CONFLICT]
    assert_seq_contiguous(mine)  # the refusal took a seq of its own
    assert [code for code, _ in letters] == [b"COMMAND_INVALID"]
    assert b"key" in letters[0][1]


async def _dead_letters(stack: Stack) -> list[tuple[bytes, bytes]]:
    """(error_code, error_message) of every dead letter."""
    reader = committed_reader(stack.bootstrap)
    await reader.start()
    found: list[tuple[bytes, bytes]] = []
    try:
        await assign_whole_topic(reader, stack.bootstrap, stack.dead_letter_topic)
        for _ in range(6):
            for messages in (await reader.getmany(timeout_ms=500)).values():
                for message in messages:
                    headers = dict(to_record(message).headers)
                    found.append((headers["error_code"], headers["error_message"]))
    finally:
        await reader.stop()
    return found


async def test_a_worker_death_after_a_resume_is_still_retried(stack: Stack) -> None:
    svc = ServiceProcess(stack, instance_id="r", max_attempts="2").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "resumed", steps=300))
            await wait_for_step(watcher, "resumed", 20, timeout_s=120)
            svc.kill()  # the job resumes as run 2 on the next instance
            svc = ServiceProcess(stack, instance_id="r", max_attempts="2").start()
            await _wait_attempt(watcher, "resumed", 2)
            os.kill(svc.worker_pids()[0], signal.SIGKILL)
            events = await watcher.until_terminal("resumed", timeout_s=300)
    finally:
        svc.stop()
    assert isinstance(events[-1], CompletedEventV1), events[-1]
    configs = [e for e in of(watcher, "resumed") if isinstance(e, ConfigEventV1)]
    assert [c.attempt for c in configs] == [1, 2, 3]
    assert_seq_contiguous(of(watcher, "resumed"))


async def _wait_attempt(watcher: EventWatcher, job_id: str, attempt: int) -> None:
    async with asyncio.timeout(180):
        while not any(
            isinstance(e, ConfigEventV1) and e.job_id == job_id and e.attempt == attempt
            for e in watcher.seen
        ):
            await watcher.poll()
        await asyncio.sleep(0.5)


async def test_a_hanging_run_is_retried_then_fails_as_stalled(stack: Stack) -> None:
    """A run that stops talking (its worker frozen with SIGSTOP: alive, silent) is killed
    after its stall timeout, retried once, then ends with TRAINING_STALLED."""
    svc = ServiceProcess(stack, max_attempts="2").start()
    job = long_job(stack, "hang", steps=5000).model_copy(update={"stall_timeout_s": 6.0})
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, job)
            for attempt in (1, 2):
                await _wait_attempt(watcher, "hang", attempt)
                os.kill(svc.worker_pids()[0], signal.SIGSTOP)
            events = await watcher.until_terminal("hang", timeout_s=120)
            assert svc.ready()
    finally:
        svc.stop()
    failed = events[-1]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is C.TRAINING_STALLED
    queued = [e for e in of(watcher, "hang") if isinstance(e, QueuedEventV1)]
    assert [q.reason for q in queued] == ["submitted", "retry"]


async def test_worker_killed_right_after_its_end_does_not_charge_the_next_job(
    stack: Stack,
) -> None:
    """A cancel whose grace runs out as the run stops: the kill and the run's last message
    race. The next job must not land on the dying worker, nor be charged its death."""
    svc = ServiceProcess(stack, cancel_grace_s="0.05").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            for i in range(3):
                victim, after = f"race-{i}", f"next-{i}"
                await send(stack, long_job(stack, victim, steps=5000), long_job(stack, after, 10))
                await wait_for_step(watcher, victim, 2, timeout_s=120)
                await send(stack, CancelJobV1(job_id=victim))
                ended = await watcher.until_terminal(after, timeout_s=180)
                assert isinstance(ended[-1], CompletedEventV1), ended[-1]
            assert svc.ready()
    finally:
        svc.stop()
    for i in range(3):
        ends = [e for e in of(watcher, f"race-{i}") if is_terminal(e)]
        assert [e.code for e in ends if isinstance(e, FailedEventV1)] == [C.TRAINING_CANCELLED]
        configs = [e for e in of(watcher, f"next-{i}") if isinstance(e, ConfigEventV1)]
        assert [c.attempt for c in configs] == [1], "the next job was charged a death"
