"""A broker outage under ``watch``, ``dashboard`` and ``submit --follow``: one line when it
goes, one when it is back, none of the Kafka library's own (the broker is this test's own,
stopped and started)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from model_trainer_contracts import JobStatus, SubmitJobV1
from model_trainer_contracts.examples import EXAMPLES

from tests.client.stream import Job, Publisher, Topics

pytestmark = pytest.mark.kafka

OUTAGE_S = 30.0  # the acceptance line: a 30 s broker stop


def _start(
    args: list[str], env: dict[str, str], tmp_path: Path, name: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "model_trainer_client", *args],
        env={**os.environ, **env},
        stdout=(tmp_path / f"{name}.out").open("wb"),
        stderr=(tmp_path / f"{name}.err").open("wb"),
    )


async def _until(what: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


class _PageStream:
    """What the dashboard's page is told over its event stream: here, its Kafka link."""

    def __init__(self) -> None:
        self.kafka: list[bool] = []

    def open(self, said: str) -> None:
        found = re.search(r"at (http://\S+/)\?token=(\S+)", said)
        assert found is not None, said
        request = urllib.request.Request(
            f"{found.group(1)}events", headers={"Authorization": f"Bearer {found.group(2)}"}
        )
        threading.Thread(target=self._read, args=(request,), daemon=True).start()

    def _read(self, request: urllib.request.Request) -> None:
        event = ""
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=120) as stream:
            for raw in stream:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "kafka":
                    self.kafka.append(bool(json.loads(line.removeprefix("data: "))["live"]))


async def test_a_broker_outage_is_two_lines_under_watch_dashboard_and_follow(
    tmp_path: Path, local_broker: object
) -> None:
    from local_kafka import LocalKafka

    assert isinstance(local_broker, LocalKafka)
    topics = Topics(local_broker.bootstrap_servers)
    await topics.create(partitions=1)
    job = Job("outage-1")
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, [job.queued(), job.config(), job.progress(2)])
        await pub.send(topics.state, job.state(JobStatus.RUNNING, request_digest=""))
    env = topics.env()
    spec = SubmitJobV1.model_validate({**EXAMPLES[0].model_dump(), "job_id": job.job_id})
    (tmp_path / "job.json").write_text(spec.model_dump_json())
    watch = _start(["watch", job.job_id], env, tmp_path, "watch")
    board = _start(["dashboard", "--port", "0"], env, tmp_path, "dashboard")
    follow = _start(["submit", str(tmp_path / "job.json"), "--follow"], env, tmp_path, "follow")

    def text(name: str) -> str:
        return (tmp_path / name).read_text()

    page = _PageStream()
    try:
        await _until(lambda: "outage-1 running" in text("watch.out"), 60)
        await _until(lambda: "dashboard of" in text("dashboard.err"), 60)
        await _until(lambda: "following its events" in text("follow.err"), 60)
        page.open(text("dashboard.err"))
        await asyncio.sleep(2)  # the dashboard's reader connected too
        local_broker.stop()
        await asyncio.sleep(OUTAGE_S)
        local_broker.start()
        back = "Kafka broker reachable again"
        names = ("watch.err", "dashboard.err", "follow.err")
        await _until(lambda: all(back in text(name) for name in names), 90)
        await _until(lambda: len(page.kafka) >= 2, 30)
        assert page.kafka == [False, True]  # the page said stale, then live again
        async with Publisher(topics.bootstrap) as pub:
            await pub.send(topics.events, job.completed())
        assert await asyncio.to_thread(watch.wait, 60) == 0
        assert await asyncio.to_thread(follow.wait, 60) == 0
    finally:
        for process in (watch, board, follow):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            process.wait(30)
        if local_broker.running_pid() is None:
            local_broker.start()
    for name in ("watch.err", "dashboard.err"):
        lines = text(name).splitlines()
        said = [line for line in lines if not line.startswith("dashboard of")]
        assert len(said) == 2, lines
        assert said[0].startswith("Kafka broker unreachable; retrying (")
        assert said[1] == back
    followed = text("follow.err").splitlines()
    assert [line for line in followed if "Kafka" in line or "aiokafka" in line] == [
        next(line for line in followed if line.startswith("Kafka broker unreachable; retrying (")),
        back,
    ]
    assert followed[-2].startswith("completed in ")
    watched = text("watch.out").splitlines()
    assert watched[0].startswith("outage-1 running step 2/10")
    assert watched[-1].startswith("outage-1 completed")
