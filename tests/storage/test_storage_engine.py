"""The engine on a real S3 server (SeaweedFS): corpora read from it, checkpoints and artifacts
written to it, resumed from it on another disk, and its outages survived."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from local_kafka import free_port
from local_s3 import LocalS3
from model_trainer.core import storage
from model_trainer.core.admission import admit
from model_trainer.engine import Preempted, StopReason, run_job
from model_trainer.engine.corpus import read_corpus
from model_trainer.engine.sampling import load_artifact
from model_trainer_contracts import (
    ConfigEventV1,
    DataSpec,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
)
from safetensors.torch import load_file

from tests.engine.engine_helpers import Env, Event, losses, make_text

from .conftest import use_s3

pytestmark = pytest.mark.s3
_C = ModelTrainerErrorCode
BUCKET = "model-trainer"


def _prefix(tmp_path: Path) -> str:
    return f"s3://{BUCKET}/{tmp_path.name}"


def test_s3_corpus_and_artifact_url_load_with_transformers(
    s3: storage.ObjectStore, env: Env, tmp_path: Path
) -> None:
    base = _prefix(tmp_path)
    s3.pipe_file(f"{base}/corpora/tiny.txt", make_text().encode())
    job = env.job(
        "gpt2",
        job_id="g1",
        data={"corpus_path": f"{base}/corpora/tiny.txt"},
        training={"max_steps": 4},
    )
    ctx = env.ctx(job, [])
    ctx.artifacts_url = f"{base}/artifacts"
    completed = run_job(ctx)
    assert completed.artifact_path == f"{base}/artifacts/g1"

    fetched = storage.download_tree(
        completed.artifact_path, tmp_path / "dl", missing=_C.MODEL_NOT_FOUND
    )
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(str(fetched))
    local = load_file(str(env.artifacts_root / "g1" / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        if name in local:
            assert torch.equal(tensor, local[name]), name
    # the corpus was fetched once, into the download cache, streamed to disk
    assert len(list((env.artifacts_root / ".downloads").iterdir())) == 1


def _job(env: Env, corpus: str) -> SubmitJobV1:
    return env.job(
        job_id="r1",
        model={"dropout": 0.1, "num_layers": 2},
        data={"corpus_path": corpus},
        training={"max_steps": 10, "eval_every": 5, "checkpoint_every": 2},
    )


def test_resume_on_another_disk_from_the_bucket(
    s3: storage.ObjectStore, env: Env, tmp_path: Path
) -> None:
    base = _prefix(tmp_path)
    s3.pipe_file(f"{base}/c.txt", make_text().encode())
    job = _job(env, f"{base}/c.txt")
    straight: list[Event] = []
    run_job(env.ctx(job.model_copy(update={"job_id": "whole"}), straight))

    first: list[Event] = []
    a = env.ctx(job, first, stop_at_step=4, reason=StopReason.SHUTDOWN)
    a.artifacts_url = f"{base}/artifacts"
    with pytest.raises(Preempted):
        run_job(a)

    other = Env(tmp_path / "node-b")  # a node that never saw node A's files
    second: list[Event] = []
    b = other.ctx(job, second, attempt=2)
    b.artifacts_url = f"{base}/artifacts"
    completed = run_job(b)
    config = second[0]
    assert isinstance(config, ConfigEventV1)
    assert config.start_step == 4
    assert losses(second) == {k: v for k, v in losses(straight).items() if k > 4}
    whole = load_file(str(env.artifacts_root / "whole" / "model.safetensors"))
    fetched = storage.download_tree(
        completed.artifact_path, tmp_path / "dl", missing=_C.MODEL_NOT_FOUND
    )
    resumed = load_file(str(fetched / "model.safetensors"))
    assert list(resumed) == list(whole)
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert load_artifact(fetched).tokenizer.vocab_size > 0


def test_store_down_mid_job_fails_retryably_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LocalS3(workdir=tmp_path / "s3", port=free_port())
    server.start()
    try:
        use_s3(server, monkeypatch)
        fs = storage.store()
        env = Env(tmp_path / "node-a")
        base = f"s3://{BUCKET}/down"
        fs.pipe_file(f"{base}/c.txt", make_text().encode())
        job = _job(env, f"{base}/c.txt")
        ctx = env.ctx(job, [])
        ctx.artifacts_url = f"{base}/artifacts"
        ctx.storage_retry_s = 2.0
        ctx.checkpoint_every = 2
        emit = ctx.emit

        def emit_and_stop_the_store(event: ConfigEventV1 | ProgressEventV1) -> None:
            emit(event)
            if isinstance(event, ProgressEventV1) and event.step == 3:
                server.stop()

        ctx.emit = emit_and_stop_the_store
        with pytest.raises(ModelTrainerError) as failed:
            run_job(ctx)
        assert failed.value.code is _C.STORAGE_UNAVAILABLE
        assert failed.value.retryable

        server.start()
        storage.forget()
        fs = storage.store()
        assert fs.ls(f"{base}/artifacts/r1", detail=False, refresh=True) != []
        with pytest.raises(FileNotFoundError):  # no artifact, so nothing to dangle
            fs.info(f"{base}/artifacts/r1/manifest.json")
        other = Env(tmp_path / "node-b")
        events: list[Event] = []
        retry = other.ctx(job, events, attempt=2)
        retry.artifacts_url = f"{base}/artifacts"
        completed = run_job(retry)
        config = events[0]
        assert isinstance(config, ConfigEventV1)
        assert config.start_step == 2  # the last checkpoint the store acknowledged
        assert fs.info(f"{completed.artifact_path}/manifest.json")["type"] == "file"
    finally:
        server.stop()
        storage.forget()


def test_admission_answers_storage_problems_with_typed_codes(
    s3: storage.ObjectStore,
    env: Env,
    tmp_path: Path,
    local_s3: LocalS3,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = _prefix(tmp_path)
    s3.pipe_file(f"{base}/ok.txt", b"some text\n")
    s3.pipe_file(f"{base}/empty.txt", b"")
    s3.pipe_file(f"{base}/dir/a.txt", b"a\n")
    s3.pipe_file(f"{base}/dir/b.txt", b"b\n")

    def code(corpus: str, max_bytes: int = 1 << 20) -> ModelTrainerErrorCode | None:
        try:
            admit(env.job(data={"corpus_path": corpus}), max_corpus_bytes=max_bytes)
        except ModelTrainerError as exc:
            return exc.code
        return None

    assert code(f"{base}/ok.txt") is None
    assert code(f"{base}/dir") is None
    assert code(f"{base}/missing.txt") is _C.CORPUS_NOT_FOUND
    assert code(f"s3://no-such-bucket-{os.getpid()}/x.txt") is _C.CORPUS_NOT_FOUND
    assert code(f"{base}/empty.txt") is _C.CORPUS_EMPTY
    assert code(f"{base}/ok.txt", max_bytes=4) is _C.CORPUS_TOO_LARGE
    assert code("s3://key:secret@bucket/x.txt") is _C.PATH_NOT_ALLOWED
    use_s3(local_s3, monkeypatch, AWS_SECRET_ACCESS_KEY="wrong")
    assert code(f"{base}/ok.txt") is _C.STORAGE_ACCESS_DENIED
    use_s3(local_s3, monkeypatch, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    assert code(f"{base}/ok.txt") is _C.STORAGE_UNAVAILABLE


def test_a_prefix_corpus_reads_like_the_same_local_folder(
    s3: storage.ObjectStore, env: Env, tmp_path: Path
) -> None:
    base = _prefix(tmp_path)
    texts = {"a.txt": "first file\n", "sub/b.txt": "second file\n", ".hidden": "skipped\n"}
    for name, text in texts.items():
        s3.pipe_file(f"{base}/books/{name}", text.encode())
        (env.data_root / "books" / name).parent.mkdir(parents=True, exist_ok=True)
        (env.data_root / "books" / name).write_text(text)
    downloads = env.artifacts_root / ".downloads"
    remote = read_corpus(
        DataSpec(corpus_path=f"{base}/books"), env.data_root, 1 << 20, downloads=downloads
    )
    local = read_corpus(DataSpec(corpus_path="books"), env.data_root, 1 << 20)
    assert [name for name, _ in remote.files] == ["a.txt", "sub/b.txt"]
    assert remote.files == local.files
    assert remote.digest == local.digest  # so the same token-cache entry
    again = read_corpus(
        DataSpec(corpus_path=f"{base}/books"), env.data_root, 1 << 20, downloads=downloads
    )
    assert again.digest == remote.digest
    assert len(list(downloads.iterdir())) == 1  # fetched once
