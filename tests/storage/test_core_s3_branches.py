"""The branches of ``core/storage.py`` and ``core/remote_folders.py`` the storage tests leave,
against the real S3 server (SeaweedFS): an artifact folder that is missing, refused or names
one object; an ended job's checkpoints released from the bucket (and a release that fails);
model folders whose names or safetensors headers are wrong; the retry's backoff; and the
typing of every failure a store can give."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from aiohttp import ClientConnectionError
from local_s3 import LocalS3
from model_trainer.core import remote_folders, storage
from model_trainer.core.pretrained import inspect_pretrained
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode

from .conftest import use_s3

_C = ModelTrainerErrorCode
BUCKET = "model-trainer"


@pytest.fixture
def base(tmp_path: Path) -> str:
    return f"s3://{BUCKET}/{tmp_path.name}"


@pytest.fixture
def head_copies(tmp_path: Path) -> Iterator[Path]:
    """This process makes head copies (as the service does), in a folder of this test's."""
    folder = tmp_path / "downloads"
    remote_folders.use_downloads(folder, full=False)
    yield folder
    remote_folders.use_downloads(None, full=False)


def _code(call: object) -> ModelTrainerErrorCode | None:
    assert callable(call)
    try:
        call()
    except ModelTrainerError as exc:
        return exc.code
    return None


def _header(header: object) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def _put_model(fs: storage.ObjectStore, url: str, weights: bytes) -> None:
    fs.pipe_file(f"{url}/config.json", b'{"model_type": "gpt2"}')
    fs.pipe_file(f"{url}/tokenizer.json", b"{}")
    fs.pipe_file(f"{url}/model.safetensors", weights)


@pytest.mark.s3
def test_an_artifact_tree_is_fetched_whole_or_refused_with_its_code(
    s3: storage.ObjectStore,
    base: str,
    tmp_path: Path,
    local_s3: LocalS3,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3.pipe_file(f"{base}/art/manifest.json", b"{}")
    s3.pipe_file(f"{base}/art/sub/model.safetensors", b"w")
    s3.pipe_file(f"{base}/art/sub/", b"")  # a folder marker: no file of that name
    fetched = storage.download_tree(f"{base}/art", tmp_path / "a", missing=_C.MODEL_NOT_FOUND)
    assert sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file()) == [
        "manifest.json",
        "sub/model.safetensors",
    ]
    # A URL naming one object names no folder below it: nothing is fetched into one.
    single = storage.download_tree(
        f"{base}/art/manifest.json", tmp_path / "b", missing=_C.MODEL_NOT_FOUND
    )
    assert not single.exists()
    missing = tmp_path / "c"
    assert (
        _code(lambda: storage.download_tree(f"{base}/nothing", missing, missing=_C.MODEL_NOT_FOUND))
        is _C.MODEL_NOT_FOUND
    )
    use_s3(local_s3, monkeypatch, AWS_SECRET_ACCESS_KEY="wrong")
    assert (
        _code(lambda: storage.download_tree(f"{base}/art", missing, missing=_C.MODEL_NOT_FOUND))
        is _C.STORAGE_ACCESS_DENIED
    )


def _release(artifacts_url: str, job_id: str) -> None:
    storage.release_checkpoints(artifacts_url, job_id)
    for thread in threading.enumerate():
        if thread.name == f"release-{job_id}":
            thread.join(timeout=30)


@pytest.mark.s3
def test_an_ended_jobs_checkpoints_leave_the_bucket_and_its_artifact_stays(
    s3: storage.ObjectStore, base: str, local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.pipe_file(f"{base}/j1/checkpoints/step-2/model.pt", b"c")
    s3.pipe_file(f"{base}/j1/manifest.json", b"{}")
    _release(base, "j1")
    prefix = base.removeprefix(storage.SCHEME)
    assert sorted(s3.find(f"{base}/j1", detail=True)) == [f"{prefix}/j1/manifest.json"]
    with structlog.testing.capture_logs() as logs:
        _release(base, "never-checkpointed")  # nothing to release: no error, no warning
    assert logs == []
    s3.pipe_file(f"{base}/j2/checkpoints/step-2/model.pt", b"c")
    use_s3(local_s3, monkeypatch, AWS_SECRET_ACCESS_KEY="wrong")
    with structlog.testing.capture_logs() as logs:
        _release(base, "j2")  # refused: left for the next release, the caller goes on
    assert [e["event"] for e in logs] == ["storage.checkpoints_not_released"]
    use_s3(local_s3, monkeypatch)
    kept = storage.store().find(f"{base}/j2", detail=True)
    assert sorted(kept) == [f"{prefix}/j2/checkpoints/step-2/model.pt"]


@pytest.mark.s3
def test_a_model_folder_url_is_a_folder_of_safe_names_with_readable_headers(
    s3: storage.ObjectStore, base: str, head_copies: Path
) -> None:
    def inspect(name: str) -> ModelTrainerErrorCode | None:
        return _code(lambda: inspect_pretrained(head_copies, f"{base}/{name}"))

    good = _header({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})
    _put_model(s3, f"{base}/good", good + bytes(24))
    s3.pipe_file(f"{base}/good/", b"")  # the markers a console's "create folder" leaves
    s3.pipe_file(f"{base}/good/extra/", b"")
    s3.pipe_file(f"{base}/good/pytorch_model.bin", b"pickled weights are never fetched")
    s3.pipe_file(f"{base}/goodish/x", b"a sibling whose name starts like the folder's")
    assert inspect("good") is None
    copy = inspect_pretrained(head_copies, f"{base}/good").path
    assert sorted(p.name for p in copy.iterdir()) == [
        remote_folders.COMPLETE,
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tokenizer.json",
    ]
    assert (copy / "pytorch_model.bin").read_bytes() == b""
    assert inspect("nothing") is _C.MODEL_NOT_FOUND
    assert inspect("good/model.safetensors") is _C.MODEL_NOT_FOUND  # an object, no folder
    _put_model(s3, f"{base}/short", b"\x01\x02\x03")
    assert inspect("short") is _C.MODEL_LOAD_FAILED
    _put_model(s3, f"{base}/past-end", struct.pack("<Q", 1000) + b"{}")
    assert inspect("past-end") is _C.MODEL_LOAD_FAILED
    _put_model(s3, f"{base}/huge", struct.pack("<Q", 200 << 20) + b"{}")
    assert inspect("huge") is _C.MODEL_LOAD_FAILED
    # The header of an object that went away between the listing and the read.
    gone = f"{base}/good/gone.safetensors"
    assert (
        _code(lambda: remote_folders.safetensors_head(s3, gone, 100, _C.MODEL_NOT_FOUND))
        is _C.MODEL_NOT_FOUND
    )


@pytest.mark.s3
def test_a_prefix_corpus_leaves_out_folder_markers(s3: storage.ObjectStore, base: str) -> None:
    s3.pipe_file(f"{base}/corpus/a.txt", b"first\n")
    s3.pipe_file(f"{base}/corpus/sub/", b"")
    s3.pipe_file(f"{base}/corpus/sub/b.txt", b"second\n")
    names = [f.name for f in storage.list_corpus(f"{base}/corpus", 1 << 20)]
    assert names == ["a.txt", "sub/b.txt"]


@pytest.mark.s3
def test_without_a_downloads_folder_copies_go_to_the_temp_directory(
    s3: storage.ObjectStore, base: str
) -> None:
    good = _header({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    _put_model(s3, f"{base}/tmp-model", good + bytes(16))
    remote_folders.use_downloads(None, full=False)
    folder = inspect_pretrained(Path("/nonexistent"), f"{base}/tmp-model").path
    downloads = Path(tempfile.gettempdir()) / f"model-trainer-downloads-{os.getuid()}"
    assert folder.parent == downloads.resolve()
    assert folder.name.endswith(".head")
    shutil.rmtree(folder)  # the system's temp directory is not this test's


@pytest.mark.s3
def test_a_model_folder_refused_by_the_store_is_refused_with_its_code(
    s3: storage.ObjectStore,
    base: str,
    head_copies: Path,
    local_s3: LocalS3,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_s3(local_s3, monkeypatch, AWS_SECRET_ACCESS_KEY="wrong")
    assert _code(lambda: inspect_pretrained(head_copies, f"{base}/any")) is (
        _C.STORAGE_ACCESS_DENIED
    )


def test_a_copy_found_in_place_is_used_and_an_incomplete_one_is_an_error(
    tmp_path: Path,
) -> None:
    """Two processes fetching one folder: the second rename finds the first's copy."""
    done, partial = tmp_path / "done", tmp_path / "partial"
    for folder in (done, partial):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / remote_folders.COMPLETE).write_text("{}")
    remote_folders.install(partial, done)  # no error: the copy in place is complete
    assert sorted(p.name for p in done.iterdir()) == [remote_folders.COMPLETE, "config.json"]
    (done / remote_folders.COMPLETE).unlink()
    with pytest.raises(OSError, match=r"not empty|exists"):
        remote_folders.install(partial, done)
    remote_folders.install(partial, tmp_path / "fresh")
    assert not partial.exists()


def test_an_object_name_that_would_land_outside_the_copy_is_refused() -> None:
    """SeaweedFS normalises such keys away; AWS keeps them as they are."""
    prefix, url = "b/models/m/", "s3://b/models/m"
    storage_names = [
        remote_folders.relative_name(f"{prefix}{name}", prefix, url)
        for name in ("config.json", "sub/model.safetensors", "..config.json")
    ]
    assert storage_names == ["config.json", "sub/model.safetensors", "..config.json"]
    bad = ["../victim/model.safetensors", "sub/../../x", "./x", "a//b", "a\\..\\b", ""]
    for name in [f"{prefix}{n}" for n in bad] + ["b/models/other/x"]:
        with pytest.raises(ModelTrainerError) as refused:
            remote_folders.relative_name(name, prefix, url)
        assert refused.value.code is _C.PATH_NOT_ALLOWED, name


def test_the_retry_backs_off_while_the_store_is_away_and_no_longer() -> None:
    slept: list[float] = []
    failures = iter([ConnectionError(), TimeoutError(), ClientConnectionError("reset")])

    def flaky() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "answered"

    assert storage.retrying("probe", "s3://b/k", flaky, sleep=slept.append) == "answered"
    assert slept == [0.5, 1.0, 2.0]

    def away() -> str:
        raise ConnectionError("refused")

    with pytest.raises(ModelTrainerError) as gave_up:
        storage.retrying("probe", "s3://b/k", away, bound_s=1.0, sleep=slept.append)
    assert gave_up.value.code is _C.STORAGE_UNAVAILABLE
    assert slept == [0.5, 1.0, 2.0, 0.5]  # 0.5 s more would pass the 1 s bound


def test_every_failure_of_a_store_is_typed_or_raised_as_it_is() -> None:
    url = "s3://b/k"
    failures: list[BaseException] = [
        FileNotFoundError("The specified bucket does not exist"),
        FileNotFoundError("no such key"),
        PermissionError("denied"),
        IsADirectoryError("a prefix"),
        ConnectionError(),
        ClientConnectionError("reset"),
    ]
    assert [storage.unavailable(e) for e in failures] == [False, False, False, False, True, True]
    codes = [storage.typed(e, url, missing=_C.CORPUS_NOT_FOUND).code for e in failures[:3]]
    assert codes == [_C.CORPUS_NOT_FOUND, _C.CORPUS_NOT_FOUND, _C.STORAGE_ACCESS_DENIED]
    already = ModelTrainerError(_C.CORPUS_EMPTY, "empty")
    assert storage.typed(already, url, missing=_C.CORPUS_NOT_FOUND) is already
    with pytest.raises(ValueError, match="a bug"):  # not the store's: raised as it is
        storage.typed(ValueError("a bug"), url, missing=_C.CORPUS_NOT_FOUND)
    with pytest.raises(TypeError, match="lacks the filesystem calls"):
        storage.as_store(object())
