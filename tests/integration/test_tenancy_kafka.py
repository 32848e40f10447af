"""Tenants on the secured broker with Kafka's own authorizer (StandardAuthorizer, ACLs made
with Kafka's Admin API): who sent a command is the topic it came on, which only that tenant's
user may write. One service start: alice's job completes; bob can neither produce to alice's
topic (the broker refuses it, and ``model-trainer submit`` says so and exits 3), nor cancel
her job, nor fine-tune from it (JOB_FORBIDDEN), and reusing her job id never touches her
artifact."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.errors import TopicAuthorizationFailedError
from local_kafka import LocalKafka
from local_service import ServiceProcess, Stack
from model_trainer_client import CommandSender, EventWatcher
from model_trainer_client.settings import connection_from_env
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    Event,
    FailedEventV1,
    ModelTrainerErrorCode,
    SubmitJobV1,
)

pytestmark = pytest.mark.kafka
C = ModelTrainerErrorCode


@pytest.fixture
def stack(secure_kafka: LocalKafka, tmp_path: Path) -> Stack:
    stack = Stack(secure_kafka.bootstrap_servers, tmp_path, security=secure_kafka.client_env())
    secure_kafka.grant(stack.commands_topic, [stack.events_topic, stack.state_topic])
    return stack


@pytest.fixture
def service(stack: Stack) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(stack, tenants="alice,bob", admin_tenant="ops").start()
    try:
        yield svc
    finally:
        svc.stop()


def tenant_env(broker: LocalKafka, stack: Stack, tenant: str) -> dict[str, str]:
    """A tenant's client: its own Kafka user, the stack's topics."""
    return {**stack.env(), **broker.client_env(tenant)}


async def until(watcher: EventWatcher, found: Callable[[Event], bool], timeout_s: float) -> Event:
    async with asyncio.timeout(timeout_s):
        while True:
            for event in watcher.seen:
                if found(event):
                    return event
            await watcher.poll()


def rejected(job_id: str, code: ModelTrainerErrorCode) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, FailedEventV1) and e.job_id == job_id and e.code is code


def same_folder(path: str, folder: Path) -> bool:
    return Path(path).resolve() == folder.resolve()


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "metrics.jsonl"
    }


async def test_tenants_are_held_apart_by_the_brokers_acls_and_the_service(
    secure_kafka: LocalKafka, stack: Stack, service: ServiceProcess, tmp_path: Path
) -> None:
    alice_env, bob_env = (tenant_env(secure_kafka, stack, t) for t in ("alice", "bob"))
    alice, bob = connection_from_env(alice_env), connection_from_env(bob_env)
    alice_topic, bob_topic = f"{stack.commands_topic}.alice", f"{stack.commands_topic}.bob"
    job = SubmitJobV1.model_validate(stack.job("ta-1", steps=40))
    async with EventWatcher(stack.connection, stack.events_topic) as watcher:
        async with CommandSender(alice, alice_topic) as sender:
            await sender.send(job)
        # Bob's cancel, on his own topic, of alice's job (running or already done).
        await until(watcher, lambda e: e.job_id == "ta-1" and e.type.endswith("progress.v1"), 120)
        async with CommandSender(bob, bob_topic) as sender:
            await sender.send(CancelJobV1(job_id="ta-1", reason="bob wants it gone"))
        forbidden = await until(watcher, rejected("ta-1", C.JOB_FORBIDDEN), 60)
        assert isinstance(forbidden, FailedEventV1)
        assert forbidden.details.get("command_rejected") is True
        done = await until(
            watcher, lambda e: e.job_id == "ta-1" and isinstance(e, CompletedEventV1), 180
        )
        assert isinstance(done, CompletedEventV1)
        art = stack.artifacts_root / ".tenants" / "alice" / "ta-1"
        assert same_folder(done.artifact_path, art)
        # The service removes the ended job's checkpoints once its terminal event is
        # committed: its own doing, not bob's, so the snapshot waits for it.
        released = time.monotonic() + 60
        while (art / "checkpoints").exists():
            assert time.monotonic() < released, "the checkpoints of ta-1 were not released"
            await asyncio.sleep(0.2)
        before = digests(art)
        assert not [name for name in before if name.startswith("checkpoints/")], before
        assert "manifest.json" in before, before

        # The broker refuses bob's user alice's topic.
        with pytest.raises(TopicAuthorizationFailedError):
            async with CommandSender(bob, alice_topic) as sender:
                await sender.send(SubmitJobV1.model_validate(stack.job("tb-x", steps=4)))
        spec = tmp_path / "tb.json"
        spec.write_text(json.dumps(stack.job("tb-x", steps=4)))
        refused = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "model_trainer_client", "submit", str(spec)],
            env={**bob_env, "MODEL_TRAINER_TENANT": "alice", "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert refused.returncode == 3, refused.stderr
        assert "Kafka refused" in refused.stderr
        assert "bob may not do this" in refused.stderr
        assert alice_topic in refused.stderr

        # Bob fine-tuning from alice's artifact, and reusing her job id.
        async with CommandSender(bob, bob_topic) as sender:
            await sender.send(SubmitJobV1.model_validate(stack.job("tb-1", init_from="ta-1")))
            await sender.send(SubmitJobV1.model_validate(stack.job("ta-1", steps=6)))
        stolen = await until(watcher, rejected("tb-1", C.JOB_FORBIDDEN), 60)
        reused = await until(watcher, rejected("ta-1", C.JOB_ID_CONFLICT), 60)
        assert isinstance(stolen, FailedEventV1)
        assert isinstance(reused, FailedEventV1)
        assert reused.details.get("command_rejected") is True
    assert digests(art) == before
    assert not (stack.artifacts_root / ".tenants" / "bob" / "ta-1").exists()
    assert not (stack.artifacts_root / "ta-1").exists()
