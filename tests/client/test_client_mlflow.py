"""``export mlflow``: events from the real broker in, a real ``mlflow server`` (SQLite backend
store, local artifact root) out, read back with MLflow's own client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from model_trainer_client.cli import app
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    EventBase,
    ProgressEventV1,
    QueuedEventV1,
)
from typer.testing import CliRunner

from tests.figures import Figure

from .stream import Job, Publisher, Topics

if TYPE_CHECKING:
    # Imported in the tests that use them: every test here needs a broker, and importing
    # mlflow cost `make test-fast` (which deselects them all) about 5 s of its collection.
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.kafka

MODEL = "tiny-char"
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    started_in_s: float


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free loopback port, its store and artifacts in a temp folder."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    log = (root / "server.log").open("wb")
    # No job-execution workers: the export needs the tracking API alone, and each worker is
    # another process importing MLflow (seconds of CPU).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    deadline = started + 300  # its imports take 20 s of CPU: more on a busy machine
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield MlflowServer(uri, time.monotonic() - started)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the CLI and the uvicorn it started
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _artifact(root: Path, job_id: str) -> Path:
    folder = root / job_id
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"job_id": job_id, "backend": "char_lstm"}))
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    return folder


def _jobs(artifacts: Path) -> tuple[list[EventBase], list[EventBase], dict[str, list[int]]]:
    """A completed job, a failed one (in another experiment, from its label), and one killed
    at step 6 whose second attempt resumed from its step-4 checkpoint: the events up to the
    kill, the events after it, and each job's train_loss steps."""
    done = Job("ml-done", labels={"team": "nlp", "sweep": "lr"})
    failed = Job("ml-failed", labels={"team": "nlp", "experiment": "char-failures"})
    resumed = Job("ml-resumed", total_steps=8)
    first: list[EventBase] = [*done.run(steps=6)]
    completed = first[-1]
    assert isinstance(completed, CompletedEventV1)
    first[-1] = completed.model_copy(update={"artifact_path": str(_artifact(artifacts, "ml-done"))})
    first += [failed.queued(), failed.config(), failed.progress(2), failed.failed()]
    first += [resumed.queued(), resumed.config()]
    first += [resumed.progress(step, val=step == 4) for step in (2, 4, 6)]
    resumed.attempt = 2
    after: list[EventBase] = [
        QueuedEventV1.model_validate(
            {**resumed.queued().model_dump(), "reason": "retry", "queue": "jobs-0"}
        ),
        resumed.config(start_step=4),
    ]
    second = [resumed.progress(step, val=step == 8) for step in (6, 8)]
    after += [p.model_copy(update={"train_loss": p.train_loss - 1.0}) for p in second]
    after.append(resumed.completed())
    steps = {"ml-done": [2, 4, 6], "ml-failed": [2], "ml-resumed": [2, 4, 6, 8]}
    return first, after, steps


async def _publish(topics: Topics, events: list[EventBase], *, create: bool) -> None:
    if create:
        await topics.create(partitions=2)
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, events)


def _export(topics: Topics, uri: str) -> str:
    args = ["export", "mlflow", "--tracking-uri", uri, "--register-model", MODEL]
    done = CliRunner().invoke(app, args, env=topics.env())
    assert done.exit_code == 0, done.output
    said = " ".join(done.stderr.split())
    assert f"exported 3 jobs to {uri}: " in said, said
    return said.split(f"exported 3 jobs to {uri}: ", 1)[1]


def _runs(client: MlflowClient) -> dict[str, Run]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=100)
    return {run.data.tags["model_trainer.job_id"]: run for run in runs}


def test_export_mirrors_jobs_into_mlflow_runs_once(
    kafka_bootstrap: str, mlflow_server: MlflowServer, tmp_path: Path, figure: Figure
) -> None:
    figure(f"mlflow server (SQLite store) answered {mlflow_server.started_in_s:.1f} s after start")
    uri = mlflow_server.uri
    topics = Topics(kafka_bootstrap)
    first, after, steps = _jobs(tmp_path / "artifacts")
    asyncio.run(_publish(topics, first, create=True))
    assert _export(topics, uri) == (
        "3 runs created, 0 rebuilt, 49 metric points, 57 params, 25 tags, "
        "1 artifacts, 1 model versions"
    )
    # The job resumes after the export ran: its run held attempt 1's step 6, so it is rebuilt.
    asyncio.run(_publish(topics, after, create=False))
    assert _export(topics, uri).startswith("1 runs created, 1 rebuilt")
    assert _export(topics, uri) == (
        "0 runs created, 0 rebuilt, 0 metric points, 0 params, 0 tags, "
        "0 artifacts, 0 model versions"
    )

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = _runs(client)
    assert sorted(runs) == ["ml-done", "ml-failed", "ml-resumed"]
    experiment = {
        job: client.get_experiment(run.info.experiment_id).name for job, run in runs.items()
    }
    assert experiment == {
        "ml-done": "model-trainer",
        "ml-failed": "char-failures",
        "ml-resumed": "model-trainer",
    }
    everything = first + after
    for job_id, run in runs.items():
        progress = {
            e.step: e for e in everything if isinstance(e, ProgressEventV1) and e.job_id == job_id
        }
        if job_id == "ml-resumed":  # attempt 2's step 6 replaced attempt 1's
            progress[6] = next(e for e in after if isinstance(e, ProgressEventV1) and e.step == 6)
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == steps[job_id]
        assert [m.value for m in history] == pytest.approx(
            [progress[s].train_loss for s in steps[job_id]]
        )
        assert [m.timestamp for m in history] == [
            int(progress[s].ts.timestamp() * 1000) for s in steps[job_id]
        ]
        for key in run.data.metrics:
            points = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert points == sorted(set(points)), (job_id, key)
        config = next(e for e in everything if isinstance(e, ConfigEventV1) and e.job_id == job_id)
        assert run.data.params["learning_rate"] == str(config.learning_rate)
        assert run.data.params["num_parameters"] == "800000"
        assert run.data.tags["backend"] == "gpt2"
        assert run.data.tags["user_id"] == "7"
        assert run.data.tags["label.team"] == "nlp"

    done, failed, resumed = runs["ml-done"], runs["ml-failed"], runs["ml-resumed"]
    assert (done.info.status, done.data.tags["status"]) == ("FINISHED", "completed")
    assert done.data.metrics["test_loss"] == pytest.approx(2.5)
    assert done.data.tags["label.sweep"] == "lr"
    assert (failed.info.status, failed.data.tags["status"]) == ("FAILED", "failed")
    assert failed.data.tags["error_code"] == "CORPUS_NOT_FOUND"
    assert failed.data.tags["error_message"] == "corpus_not_found happened"
    assert failed.data.tags["error_stage"] == "prepare"
    assert (resumed.info.status, resumed.data.tags["attempt"]) == ("FINISHED", "2")
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "val_loss")] == [4, 8]

    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", done.info.run_id)]
    fetched = Path(client.download_artifacts(done.info.run_id, "model", str(tmp_path / "dl")))
    assert sorted(p.name for p in fetched.iterdir()) == ["manifest.json", "model.safetensors"]
    assert (fetched / "model.safetensors").read_bytes() == bytes(range(256)) * 4
    if os.environ.get("MODEL_TRAINER_UPDATE_SCREENSHOT"):
        run_page = f"{uri}/#/experiments/{resumed.info.experiment_id}/runs/{resumed.info.run_id}"
        _screenshot(f"{run_page}/model-metrics")


def _screenshot(page: str) -> None:
    """The README's picture of an exported run, by headless Debian chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium is not None, "needs Debian's chromium"
    assert driver_path is not None, "needs Debian's chromium-driver"
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1600,1000")
    browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        browser.get(page)
        shown = "return document.querySelectorAll('svg .trace, canvas').length >= 4"
        WebDriverWait(browser, 120, poll_frequency=0.5).until(lambda b: b.execute_script(shown))
        time.sleep(3)  # charts and tables settle after their data arrives
        assert browser.save_screenshot(str(ROOT / "docs" / "mlflow.png"))
    finally:
        browser.quit()


def _until(what: Callable[[], bool], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_follow_mirrors_a_job_live_and_rebuilds_its_run_on_resume(
    kafka_bootstrap: str, mlflow_server: MlflowServer
) -> None:
    topics = Topics(kafka_bootstrap)
    from mlflow.tracking import MlflowClient

    job = Job("ml-live", labels={"experiment": "live"}, total_steps=8)
    client = MlflowClient(tracking_uri=mlflow_server.uri)

    def steps() -> list[int]:
        found = client.get_experiment_by_name("live")
        if found is None:
            return []
        runs = client.search_runs([found.experiment_id])
        if len(runs) != 1 or (runs[0].info.status != "FINISHED" and job.attempt == 2):
            return []
        return [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]

    asyncio.run(_publish(topics, [job.queued(), job.config()], create=True))
    script = Path(sys.executable).parent / "model-trainer-client"
    command = [str(script), "export", "mlflow", "--tracking-uri", mlflow_server.uri, "--follow"]
    follower = subprocess.Popen(
        command,
        env={**os.environ, **topics.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        asyncio.run(_publish(topics, [job.progress(s) for s in (2, 4, 6)], create=False))
        _until(lambda: steps() == [2, 4, 6])
        job.attempt = 2
        resumed = [job.queued(), job.config(start_step=4), job.progress(6), job.progress(8)]
        asyncio.run(_publish(topics, [*resumed, job.completed()], create=False))
        _until(lambda: steps() == [2, 4, 6, 8])
        live = client.get_experiment_by_name("live")
        assert live is not None
        run = client.search_runs([live.experiment_id])[0]
        sixth = client.get_metric_history(run.info.run_id, "train_loss")[2]
        assert sixth.timestamp == int(resumed[2].ts.timestamp() * 1000)  # attempt 2's step 6
    finally:
        follower.send_signal(signal.SIGINT)
        output, _ = follower.communicate(timeout=60)
    assert follower.returncode == 0, output
    assert "exported 1 jobs" in " ".join(output.split())
    assert "1 rebuilt" in " ".join(output.split())
