"""Object storage through the real service: a job reads its corpus from S3 (SeaweedFS), is
killed on instance A, resumes on instance B (another disk, no shared volume) from A's last
checkpoint in the bucket, and its artifact in the bucket holds the weights of a run never
interrupted. Then, through B, the S3 server is stopped mid-job and started again: the job
completes or ends with the retryable code, never with a dangling artifact reference."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import torch
from local_s3 import LocalS3
from local_service import CORPUS, ServiceProcess, Stack
from model_trainer.core import storage
from model_trainer.engine import RunContext, run_job
from model_trainer.engine.sampling import load_artifact
from model_trainer_client import EventWatcher, is_terminal
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerErrorCode,
    SubmitJobV1,
)
from pydantic import JsonValue
from safetensors.torch import load_file

from tests.figures import Figure

from .flows import assert_seq_contiguous, of, send, wait_for_step

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.slow]
OUTAGE_S = 10.0  # well under the run's retry bound (MODEL_TRAINER_STORAGE_RETRY_S, 120 s)


async def test_s3_job_killed_on_a_resumes_on_b_from_the_bucket(
    stack: Stack,
    local_s3: LocalS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    figure: Figure,
) -> None:
    for name, value in local_s3.client_env().items():
        monkeypatch.setenv(name, value)
    storage.forget()
    base = f"s3://{local_s3.bucket}/{stack.uid}"
    storage.store().pipe_file(f"{base}/corpora/shakespeare.txt", CORPUS.encode())
    spec = stack.job("s3-1", steps=150)
    spec["data"] = {"corpus_path": f"{base}/corpora/shakespeare.txt"}
    spec["training"] = {
        "max_steps": 150,
        "batch_size": 8,
        "eval_every": 50,
        "eval_batches": 2,
        "checkpoint_every": 10,
    }
    job = SubmitJobV1.model_validate(spec)
    s3_env = {k.lower(): v for k, v in local_s3.client_env().items()}
    url = f"{base}/artifacts"
    disk_a, disk_b = tmp_path / "node-a", tmp_path / "node-b"

    def service(name: str, disk: Path) -> ServiceProcess:
        svc = ServiceProcess(
            stack, name, instance_id=name, artifacts_root=str(disk), artifacts_url=url
        )
        svc.env.update({k.upper(): v for k, v in s3_env.items()})
        try:
            return svc.start(timeout_s=300)  # a loaded 2-core machine starts workers slowly
        except BaseException:
            svc.stop()  # one that never got ready is not left running
            raise

    # The second job, through B: the store is stopped mid-run, then started again.
    outage = job.model_copy(
        update={
            "job_id": "s3-2",
            "training": job.training.model_copy(update={"max_steps": 300}),
        }
    )
    a = service("a", disk_a)
    b: ServiceProcess | None = None
    down_s = 0.0
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, job)
            await wait_for_step(watcher, "s3-1", 30, timeout_s=180)
            a.kill()
            b = service("b", disk_b)
            await watcher.until_terminal("s3-1", timeout_s=300)
            await send(stack, outage)
            await wait_for_step(watcher, "s3-2", 20, timeout_s=180)
            stopped = time.monotonic()
            local_s3.stop()
            await asyncio.sleep(OUTAGE_S)
            local_s3.start()
            down_s = time.monotonic() - stopped
            await watcher.until_terminal("s3-2", timeout_s=300)
            await asyncio.sleep(2)  # a second terminal event would show up here
            await watcher.poll()
    finally:
        a.stop()
        if b is not None:
            b.stop()
        if local_s3.running_pid() is None:  # the session's other tests need it
            local_s3.start()
    events = of(watcher, "s3-1")
    terminal = [e for e in events if is_terminal(e)]
    assert len(terminal) == 1, terminal
    completed = terminal[0]
    assert isinstance(completed, CompletedEventV1), completed
    assert completed.artifact_path == f"{url}/s3-1"
    configs = [e for e in events if isinstance(e, ConfigEventV1)]
    assert [c.attempt for c in configs] == [1, 2]
    assert configs[1].start_step >= 10, "attempt 2 did not resume from A's checkpoint"
    assert_seq_contiguous(events)
    assert not (disk_b / "s3-1" / "checkpoints" / "attempt-1").exists()
    figure(f"s3 job resumed on another disk from step {configs[1].start_step} of 150")

    fetched = storage.download_tree(
        completed.artifact_path, tmp_path / "fetched", missing=ModelTrainerErrorCode.MODEL_NOT_FOUND
    )
    loaded = load_artifact(fetched)
    assert loaded.tokenizer.vocab_size > 0
    # The same job never interrupted, in this process: the same weights.
    straight = run_job(
        RunContext(
            job=job.model_copy(update={"job_id": "straight"}),
            data_root=stack.data_root,
            artifacts_root=tmp_path / "straight",
            threads=1,
            checkpoint_every=10,
        )
    )
    assert straight.steps == completed.steps == 150
    whole = load_file(str(tmp_path / "straight" / "straight" / "model.safetensors"))
    resumed = load_file(str(fetched / "model.safetensors"))
    assert list(resumed) == list(whole)
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    # Once the completed event is committed, the job's checkpoints leave the bucket too.
    fs = storage.store()

    def left() -> list[str]:  # objects (some stores keep empty "folders" as prefixes)
        found = fs.find(f"{url}/s3-1/checkpoints", detail=True)
        return [name for name, meta in found.items() if meta.get("type") == "file"]

    for _ in range(100):
        if not left():
            break
        await asyncio.sleep(0.1)
    assert left() == []
    assert "manifest.json" in list(storage.iter_names(fs, f"{url}/s3-1"))

    # The outage: the run waited for the store (retries in B's log) and either completed
    # with an artifact whose every file is in the bucket, or ended with the retryable code
    # and no artifact at all: never an event naming a partial one.
    assert b is not None
    retries = [line for line in b.log_lines() if line.get("event") == "storage.retry"]
    assert retries, "the run never noticed the store was down"
    events = of(watcher, "s3-2")
    terminal = [e for e in events if is_terminal(e)]
    assert len(terminal) == 1, terminal
    assert_seq_contiguous(events)
    ended = terminal[0]
    storage.forget()  # the server restarted: no connection kept from before
    fs = storage.store()
    if isinstance(ended, CompletedEventV1):
        assert ended.artifact_path == f"{url}/s3-2"
        manifest: JsonValue = json.loads(fs.cat_file(f"{ended.artifact_path}/manifest.json"))
        files = manifest.get("files") if isinstance(manifest, dict) else None
        assert isinstance(files, dict)
        assert files
        listed = sorted(files)
        prefix = ended.artifact_path.removeprefix(storage.SCHEME) + "/"
        stored = [name.removeprefix(prefix) for name in fs.find(prefix, detail=True)]
        assert [name for name in listed if name not in stored] == []
        fetched = storage.download_tree(
            ended.artifact_path,
            tmp_path / "fetched-2",
            missing=ModelTrainerErrorCode.MODEL_NOT_FOUND,
        )
        assert load_artifact(fetched).tokenizer.vocab_size > 0
        outcome = f"completed at step {ended.steps}"
    else:
        assert isinstance(ended, FailedEventV1), ended
        assert ended.code is ModelTrainerErrorCode.STORAGE_UNAVAILABLE
        assert ended.retryable
        with pytest.raises(FileNotFoundError):
            fs.info(f"{url}/s3-2/manifest.json")
        outcome = f"failed {ended.code.value} (retryable)"
    figure(
        f"s3 store down {down_s:.1f}s mid-job (after step 20 of 300): {outcome}; "
        f"{len(retries)} storage retries logged"
    )
    storage.forget()
