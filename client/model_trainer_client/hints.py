"""What the CLI says instead of staying silent: a job id when none is given, whether a reused
id asks for another job, whether any trainer is there to pick a job up, and how to go on
with a job after the CLI stops following it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from model_trainer_contracts import SubmitJobV1

from .settings import KafkaConnection, client_kwargs

SERVICE_GROUP = "model-trainer"  # the service's MODEL_TRAINER_GROUP_ID default
PROG = ["model-trainer"]  # the command users typed; the light client's main() sets its own


def spec_digest(job: SubmitJobV1) -> str:
    """The service's ``request_digest`` of a submit command (a test keeps the two equal)."""
    canonical = json.dumps(job.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_job_id(stem: str = "job") -> str:
    """A fresh job id: ``stem`` (cut to fit) and eight random hex digits."""
    return f"{stem[:100]}-{secrets.token_hex(4)}"


def service_group(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("MODEL_TRAINER_GROUP_ID") or SERVICE_GROUP


async def group_members(connection: KafkaConnection | str, group: str) -> int:
    """How many consumers the group has now (0: no trainer is running, or none has joined)."""
    admin = AIOKafkaAdminClient(**client_kwargs(connection))
    await admin.start()
    try:
        for attempt in range(3):
            try:
                responses = await admin.describe_consumer_groups([group])
                break
            except GroupCoordinatorNotAvailableError:
                # No coordinator yet: the offsets topic is still being made (no group has
                # ever joined this broker), or moving; either way nobody is in the group now.
                if attempt == 2:
                    return 0
                await asyncio.sleep(1.0)
    finally:
        await admin.close()
    members = 0
    for response in responses:
        described = response.to_object()
        groups = described.get("groups", []) if isinstance(described, dict) else []
        for entry in groups:
            if isinstance(entry, dict) and entry.get("group") == group:
                found = entry.get("members", [])
                members += len(found) if isinstance(found, list) else 0
    return members


def follow_up(job_id: str) -> list[str]:
    """The commands to go on with a job the CLI stops following."""
    prog = PROG[0]
    return [
        f"follow it: {prog} watch {job_id}",
        f"its state: {prog} status {job_id}",
        f"cancel it: {prog} cancel {job_id}",
    ]
