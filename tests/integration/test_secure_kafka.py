"""The service, its CLI and the light client through a SASL_SSL listener (SCRAM-SHA-512, a CA
made for the run), and start-up failing fast and clearly when Kafka refuses the service."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from local_kafka import LocalKafka, free_port
from local_service import ServiceProcess, Stack
from local_tls import write_ca
from model_trainer_client import EventWatcher
from model_trainer_contracts import CompletedEventV1, ConfigEventV1, ProgressEventV1

pytestmark = pytest.mark.kafka

# Distinctive, so that finding it in a log cannot be a coincidence.
WRONG_PASSWORD = "Wr0ng-zebra-Pa55word-7781"
START_UP_LIMIT_S = 10.0


@pytest.fixture
def stack(secure_kafka: LocalKafka, tmp_path: Path) -> Stack:
    return Stack(secure_kafka.bootstrap_servers, tmp_path, security=secure_kafka.client_env())


@pytest.fixture
def password(stack: Stack) -> str:
    return stack.security["MODEL_TRAINER_KAFKA_SASL_PASSWORD"]


@pytest.fixture
def service(stack: Stack) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(stack).start()
    try:
        yield svc
    finally:
        svc.stop()


def _cli(
    args: list[str], env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


async def test_job_end_to_end_over_sasl_ssl(
    stack: Stack, service: ServiceProcess, secure_kafka: LocalKafka, password: str, tmp_path: Path
) -> None:
    import asyncio

    job = tmp_path / "job.json"
    job.write_text(json.dumps(stack.job("secure-ok", steps=8)))
    async with EventWatcher(stack.connection, stack.events_topic) as watcher:
        # The service's CLI: submit and follow, connected by the MODEL_TRAINER_KAFKA_* variables.
        submitted = await asyncio.to_thread(
            _cli, ["model_trainer", "submit", str(job), "--follow"], service.env
        )
        assert submitted.returncode == 0, submitted.stderr
        assert "completed" in submitted.stderr
        assert "step 8/8" in submitted.stderr
        # The test's own clients, through the same connection description.
        events = await watcher.until_terminal("secure-ok", timeout_s=60)
    types = [e.type for e in events]
    assert any(isinstance(e, ConfigEventV1) for e in events), types
    assert isinstance(events[-1], CompletedEventV1), types
    assert any(isinstance(e, ProgressEventV1) for e in events)
    assert [e.seq for e in events] == list(range(len(events)))

    # The light client's own script, connected by options; only the password is a variable.
    env = {k: v for k, v in service.env.items() if not k.startswith("MODEL_TRAINER_KAFKA_")}
    env["MODEL_TRAINER_KAFKA_SASL_PASSWORD"] = password
    status = await asyncio.to_thread(
        _cli,
        [
            "model_trainer_client",
            "status",
            "secure-ok",
            "-b",
            secure_kafka.bootstrap_servers,
            "--security-protocol",
            "SASL_SSL",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            stack.security["MODEL_TRAINER_KAFKA_SASL_USERNAME"],
            "--ssl-cafile",
            str(secure_kafka.ca_file),
        ],
        env,
    )
    assert status.returncode == 0, status.stderr
    assert "completed" in status.stdout
    assert password not in service.log_path.read_text()


def _start_fails(svc: ServiceProcess) -> str:
    """Start the service, expect it to exit within ``START_UP_LIMIT_S`` of its first log line
    (its own decision: the interpreter's start and imports, slow on a busy machine, are not
    counted), stop it, and return its log."""
    try:
        with pytest.raises(RuntimeError, match="service exited 3"):
            svc.start(timeout_s=60)
    finally:
        svc.stop()
    stamps = [
        (line.get("event"), datetime.fromisoformat(str(line["timestamp"])))
        for line in svc.log_lines()
        if "timestamp" in line
    ]
    gave_up = [at for event, at in stamps if event == "cannot connect to Kafka; exiting"]
    assert gave_up, svc.tail()
    log = svc.log_path.read_text()
    assert (gave_up[0] - stamps[0][1]).total_seconds() <= START_UP_LIMIT_S, log
    return log


def test_wrong_password_fails_start_up_fast_and_is_never_logged(
    stack: Stack, password: str
) -> None:
    svc = ServiceProcess(stack, "wrong-password", kafka_sasl_password=WRONG_PASSWORD)
    log = _start_fails(svc)
    assert "cannot connect to Kafka; exiting" in log
    assert "refused the SASL credentials of user 'model-trainer' (SCRAM-SHA-512)" in log
    assert "KafkaAuthenticationError" in log
    assert WRONG_PASSWORD not in log
    assert password not in log

    # The light client says the same, and exits 3.
    env = {**svc.env, "MODEL_TRAINER_KAFKA_SASL_PASSWORD": WRONG_PASSWORD}
    jobs = _cli(["model_trainer_client", "jobs"], env, timeout_s=60)
    assert jobs.returncode == 3, jobs.stderr
    assert "refused the SASL credentials" in jobs.stderr
    assert WRONG_PASSWORD not in jobs.stderr + jobs.stdout


def test_untrusted_ca_fails_start_up_fast(stack: Stack, tmp_path: Path) -> None:
    other_ca = write_ca(tmp_path / "other-ca.pem", "a CA that signed nothing here")
    svc = ServiceProcess(stack, "untrusted", kafka_ssl_cafile=str(other_ca))
    log = _start_fails(svc)
    assert "is not trusted: self-signed certificate in certificate chain" in log
    assert "KafkaTLSError" in log
    assert str(other_ca) in log


def test_readyz_says_why_the_broker_cannot_be_used(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    svc = ServiceProcess(Stack(f"127.0.0.1:{port}", tmp_path), "no-broker")
    with svc.log_path.open("ab") as log:
        svc.proc = subprocess.Popen(
            [sys.executable, "-m", "model_trainer", "serve"],
            env=svc.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            code, body = svc.readyz()
            if code == 503 and "reasons" in body:
                break
            time.sleep(0.3)
        assert body.get("ready") is False, body
        reasons = body["reasons"]
        assert isinstance(reasons, dict)
        assert f"127.0.0.1:{port}" in reasons["broker"]
    finally:
        svc.kill()
