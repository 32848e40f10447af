"""``model-trainer sweep`` against the real service (two workers): six trials over learning
rate and width, the bad ones pruned by a cancel naming the sweep, the ``sweep`` process killed
midway and run again, and the best trial printed."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiokafka import TopicPartition
from local_service import ServiceProcess, Stack
from model_trainer_client.decode import decode_update
from model_trainer_client.kafka import topic_partitions
from model_trainer_client.readers import TopicReader
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
    decode_command,
)

from tests.figures import Figure

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LEARNING_RATES = [0.02, 0.005, 1e-5]  # 1e-5 hardly learns in 200 steps: pruned
WIDTHS = [16, 32]


def _sweep_file(stack: Stack, tmp_path: Path, name: str) -> Path:
    base = stack.job("unused", steps=200)
    del base["job_id"], base["type"]
    base["training"] = {"max_steps": 200, "batch_size": 8, "eval_every": 20, "eval_batches": 2}
    base["progress"] = {"every_steps": 10}
    sweep = {
        "name": name,
        "base": base,
        "space": {
            "training.learning_rate": {"values": LEARNING_RATES},
            "model.hidden_size": {"values": WIDTHS},
        },
        "sampler": "grid",
        "budget": {"trials": 6, "parallelism": 2},
        "objective": {"metric": "val_loss"},
        "pruner": {"kind": "median", "startup_trials": 2},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _sweep(path: Path) -> list[str]:
    return [sys.executable, "-m", "model_trainer_client", "sweep", str(path)]


def _lines_until(proc: subprocess.Popen[str], pattern: str, timeout_s: float) -> list[str]:
    """stderr's lines up to the first that matches ``pattern``."""
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line.rstrip("\n"))
            if re.search(pattern, line):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout_s):
        raise AssertionError(f"no line matched {pattern!r} in {timeout_s}s: {seen[-20:]}")
    return seen


async def _read(stack: Stack, topic: str) -> list[bytes]:
    """Every record value of ``topic``, from its beginning."""
    async with TopicReader(stack.connection) as reader:
        ids = await topic_partitions(stack.connection, topic)
        await reader.add({TopicPartition(topic, p): None for p in ids})
        return [record.value for record in await reader.read_to_end()]


def _submits(values: list[bytes]) -> Iterator[SubmitJobV1]:
    for value in values:
        try:
            command = decode_command(value)
        except ModelTrainerError:
            continue
        if isinstance(command, SubmitJobV1):
            yield command


@pytest.mark.timeout(1200)  # a loaded 2-core machine: the service alone took 120 s to start
def test_a_sweep_prunes_survives_a_kill_and_ends_with_its_best_trial(
    stack: Stack, tmp_path: Path, figure: Figure
) -> None:
    name = f"sw-{stack.uid}"
    path = _sweep_file(stack, tmp_path, name)
    service = ServiceProcess(stack, workers="2").start(timeout_s=300)
    env = {**service.env, "COLUMNS": "200"}
    try:
        started = time.monotonic()
        first = subprocess.Popen(
            _sweep(path), env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            # killed once a trial has completed and the next one is submitted: the restart
            # must re-attach to a trial it did not see start
            before = _lines_until(first, r"^submitted trial 2 ", timeout_s=480)
        finally:
            first.kill()  # SIGKILL: nothing of it is kept but what it put in Kafka
            first.wait(timeout=10)
        again = subprocess.run(
            _sweep(path), env=env, capture_output=True, text=True, timeout=600, check=False
        )
        took = time.monotonic() - started
        assert again.returncode == 0, "\n".join(before) + again.stderr + service.tail()
        values = asyncio.run(_read(stack, stack.events_topic))
        commands = asyncio.run(_read(stack, stack.commands_topic))
    finally:
        service.stop()

    resumed = next(line for line in again.stderr.splitlines() if line.startswith("resuming"))
    counts = re.search(r"(\d+) trials known, (\d+) ended, (\d+) running", resumed)
    assert counts is not None, resumed
    # trial 2 was submitted by the killed run (and not again: see the submits below); it may
    # still run when the second run reads the topics, or have ended meanwhile
    known, ended = int(counts.group(1)), int(counts.group(2))
    assert (known >= 3, ended >= 1) == (True, True), resumed
    events = [
        e for v in values if (e := decode_update(v)) is not None and e.labels.get("sweep") == name
    ]
    jobs = [f"{name}-trial-{n}" for n in range(6)]
    # every trial was submitted once, trained once (one attempt's config), and ended once
    assert [sum(c.job_id == j for c in _submits(commands)) for j in jobs] == [1] * 6
    configs = [sum(isinstance(e, ConfigEventV1) and e.job_id == j for e in events) for j in jobs]
    assert configs == [1] * 6, again.stderr
    ends = {e.job_id: e for e in events if isinstance(e, CompletedEventV1 | FailedEventV1)}
    assert sorted(ends) == jobs
    pruned = [j for j, e in ends.items() if isinstance(e, FailedEventV1)]
    for job_id in pruned:
        failed = ends[job_id]
        assert isinstance(failed, FailedEventV1)
        assert failed.code is ModelTrainerErrorCode.TRAINING_CANCELLED
        assert f"pruned by sweep {name}: val_loss" in failed.message
    # both 1e-5 trials are worse than every completed trial at their first evaluation: the
    # sweep prunes both (its cancel); on a loaded machine the last trial's final steps can
    # outrun the cancel (its step-100 evaluation reached the sweep coalesced into a later
    # progress event), and then it ends completed, which the trials' table shows as it is
    ordered = [j for j in jobs[4:] if f"cancel sent for trial {j[-1]} {j}: pruned" in again.stderr]
    assert ordered == jobs[4:], again.stderr
    assert pruned, again.stderr  # and at least one prune ended its job, TRAINING_CANCELLED
    completed = {j: e for j, e in ends.items() if isinstance(e, CompletedEventV1)}
    best = min(completed, key=lambda j: completed[j].best_val_loss or 99.0)
    best_loss = completed[best].best_val_loss
    assert best_loss is not None
    n = jobs.index(best)
    assert again.stdout.splitlines()[0].startswith(
        f"best trial {n} {best}: val_loss {best_loss:.4f}"
    )
    assert again.stdout.splitlines()[1] == f"artifact: {completed[best].artifact_path}"
    assert f"{len(pruned)} pruned" in again.stderr
    figure(
        f"sweep: 6 trials in {took:.0f}s on 2 workers, {len(completed)} completed, "
        f"{len(pruned)} pruned ({', '.join(j.rsplit('-', 1)[1] for j in pruned)}); {resumed}; "
        f"{again.stdout.splitlines()[0]}"
    )
