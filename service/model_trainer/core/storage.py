"""URL-addressed storage: ``s3://bucket/key`` on any S3-compatible store, through fsspec/s3fs.

Local paths stay what they were (relative to the data root, or under the artifacts root);
this module is only reached for a URL. Credentials and the endpoint come from where every
AWS client looks (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, the
instance's or pod's role, ``AWS_ENDPOINT_URL`` for a store other than AWS): never from a
command, and never written to a log or an event.

Every failure becomes a typed error: a missing bucket or object CORPUS_NOT_FOUND (for a
corpus) or MODEL_NOT_FOUND (an artifact), refused credentials STORAGE_ACCESS_DENIED (no
retry helps), a store that does not answer STORAGE_UNAVAILABLE (retryable) once
:func:`retrying` has backed off past its bound.

fsspec ships no type information: the filesystem is narrowed to :class:`ObjectStore`, the
few calls used here, at runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial as partial_call
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import structlog
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue

from .layout import temp_path

_C = ModelTrainerErrorCode
log = structlog.get_logger()
SCHEME = "s3://"
CHUNK = 8 << 20  # files are digested in blocks of this size
# Acceptance asks the store once, quickly: it answers in milliseconds or not at all.
PROBE_TIMEOUTS = {"connect_timeout": 3, "read_timeout": 5, "retries": {"max_attempts": 1}}
RUN_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}}
RETRY_BOUND_S = 120.0  # a job waits this long for its store before it fails, retryably
PROGRESS_EVERY_S = 2.0  # a running download reports its bytes this often (none if sooner done)
_T = TypeVar("_T")


class ByteMeter(Protocol):
    """fsspec's transfer callback, the two calls s3fs makes while it streams an object."""

    def set_size(self, size: int) -> None: ...

    def relative_update(self, inc: int = 1) -> None: ...


@runtime_checkable
class ObjectStore(Protocol):
    """The part of fsspec's ``AbstractFileSystem`` this service uses."""

    retries: int

    def info(self, path: str) -> Mapping[str, object]: ...

    def find(self, path: str, *, detail: bool) -> Mapping[str, Mapping[str, object]]: ...

    def ls(self, path: str, *, detail: bool, refresh: bool) -> list[str]: ...

    def put_file(self, lpath: str, rpath: str) -> None: ...

    def pipe_file(self, path: str, value: bytes) -> None: ...

    def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes: ...

    def get_file(self, rpath: str, lpath: str, *, callback: ByteMeter = ...) -> None: ...

    def rm(self, path: str, *, recursive: bool) -> None: ...

    def invalidate_cache(self, path: str | None = None) -> None: ...


def is_url(text: str | None) -> bool:
    return text is not None and text.startswith(SCHEME)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def check_url(url: str, *, field: str) -> None:
    """PATH_NOT_ALLOWED for a URL that names no bucket or carries credentials."""
    rest = url.removeprefix(SCHEME)
    bucket = rest.split("/", 1)[0]
    if not bucket or "@" in bucket or ":" in bucket:
        raise ModelTrainerError(
            _C.PATH_NOT_ALLOWED,
            f"{field} must be s3://bucket/key (no credentials in the URL)",
            details={field: url if "@" not in bucket else "s3://<redacted>"},
        )


def store(*, probe: bool = False) -> ObjectStore:
    """The S3 filesystem (cached by fsspec per process and options)."""
    fsspec = importlib.import_module("fsspec")
    timeouts = PROBE_TIMEOUTS if probe else RUN_TIMEOUTS
    fs = as_store(fsspec.filesystem("s3", config_kwargs=timeouts, use_listings_cache=False))
    if probe:
        fs.retries = 1  # s3fs's own retry loop (5 tries by default): acceptance asks once
    return fs


def as_store(fs: object) -> ObjectStore:
    """``fs`` narrowed to the calls this service makes; TypeError when it lacks one."""
    if not isinstance(fs, ObjectStore):
        raise TypeError(f"{type(fs).__name__} lacks the filesystem calls this service uses")
    return fs


def forget() -> None:
    """Drop the cached filesystems: the next :func:`store` reads credentials and endpoint
    from the environment again (for tests that change them)."""
    fsspec = importlib.import_module("fsspec")
    fsspec.get_filesystem_class("s3").clear_instance_cache()


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store did not answer (as opposed to answering no)."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    return any(
        c.__module__.split(".", 1)[0] in ("botocore", "aiobotocore", "aiohttp")
        for c in type(exc).__mro__
    )


def typed(exc: BaseException, url: str, *, missing: ModelTrainerErrorCode) -> ModelTrainerError:
    """The typed error for a failed call on ``url``; ``missing`` is the not-found code."""
    if isinstance(exc, ModelTrainerError):
        return exc
    details: dict[str, JsonValue] = {"url": url}
    if isinstance(exc, FileNotFoundError):
        bucket = "bucket" in str(exc).lower()
        details["missing"] = "bucket" if bucket else "object"
        what = "no such bucket" if bucket else "no such object or prefix"
        return ModelTrainerError(missing, f"{what}: {url}", details=details)
    if isinstance(exc, PermissionError):
        return ModelTrainerError(
            _C.STORAGE_ACCESS_DENIED,
            f"the store refused access to {url} (credentials or policy)",
            details=details,
        )
    if unavailable(exc):
        details["error"] = type(exc).__name__
        return ModelTrainerError(
            _C.STORAGE_UNAVAILABLE, f"the store did not answer for {url}", details=details
        )
    raise exc


def retrying(
    what: str,
    url: str,
    call: Callable[[], _T],
    *,
    bound_s: float = RETRY_BOUND_S,
    missing: ModelTrainerErrorCode = _C.CHECKPOINT_NOT_FOUND,
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """``call()``, retried with exponential backoff (0.5 s doubling to 8 s) while the store
    is unavailable, until ``bound_s`` has passed: then STORAGE_UNAVAILABLE. Any other failure
    is typed at once."""
    started, delay = time.monotonic(), 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            error = typed(exc, url, missing=missing)
            waited = time.monotonic() - started
            if error.code is not _C.STORAGE_UNAVAILABLE or waited + delay > bound_s:
                raise error from None
            log.warning("storage.retry", what=what, url=url, waited_s=round(waited, 1))
            sleep(delay)
            delay = min(delay * 2, 8.0)


def is_object(name: str, meta: Mapping[str, object]) -> bool:
    """Whether a listed entry is an object to fetch: not a folder, nor the empty ``name/``
    marker a console's "create folder" leaves (s3fs lists it as a file)."""
    return meta.get("type") == "file" and not name.endswith("/")


@dataclass(frozen=True)
class RemoteFile:
    name: str  # relative to the corpus URL (its base name for a single object)
    url: str
    size: int
    version: str  # ETag and version id: changes whenever the object does


def list_corpus(url: str, max_bytes: int) -> list[RemoteFile]:
    """The objects of a corpus URL (one object, or every non-hidden object below a prefix),
    checked: CORPUS_NOT_FOUND, STORAGE_ACCESS_DENIED, STORAGE_UNAVAILABLE, CORPUS_EMPTY,
    CORPUS_TOO_LARGE. Two requests at most for an object (HEAD, then a list)."""
    check_url(url, field="corpus_path")
    fs = store(probe=True)
    try:
        info = fs.info(url)
        if info.get("type") == "file":
            files = [_remote(url.rsplit("/", 1)[-1], url, info)]
        else:
            base = url.rstrip("/")
            found = fs.find(base, detail=True)
            files = [
                _remote(name[len(base.removeprefix(SCHEME)) + 1 :], SCHEME + name, meta)
                for name, meta in sorted(found.items())
                if is_object(name, meta)
            ]
            files = [f for f in files if not any(p.startswith(".") for p in f.name.split("/"))]
    except Exception as exc:
        raise typed(exc, url, missing=_C.CORPUS_NOT_FOUND) from None
    size = sum(f.size for f in files)
    if not files or size == 0:
        raise ModelTrainerError(_C.CORPUS_EMPTY, f"no data at {url}", details={"corpus_path": url})
    check_corpus_size(size, max_bytes)
    return files


def check_corpus_size(size: int, max_bytes: int) -> None:
    """CORPUS_TOO_LARGE when a corpus of ``size`` bytes is over the limit (wherever it lies)."""
    if size > max_bytes:
        raise ModelTrainerError(
            _C.CORPUS_TOO_LARGE,
            f"corpus is {size} bytes; the limit is {max_bytes}",
            details={"size": size, "limit": max_bytes},
        )


def _remote(name: str, url: str, info: Mapping[str, object]) -> RemoteFile:
    size = info.get("size")
    version = f"{info.get('ETag') or ''}:{info.get('VersionId') or ''}"
    return RemoteFile(name, url, size if isinstance(size, int) else 0, version)


@dataclass(frozen=True)
class Fetching:
    """How far a corpus download has come (what a download event carries)."""

    url: str
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    elapsed_s: float
    done: bool


class DownloadMeter:
    """Counts the bytes s3fs streams (a :class:`ByteMeter`) across a corpus's objects and
    calls ``report`` at most every ``every_s``: a download that ends sooner says nothing; one
    that reported says so once more when it ends. A retried object counts from zero again."""

    def __init__(
        self,
        url: str,
        files: list[RemoteFile],
        report: Callable[[Fetching], None],
        *,
        every_s: float | None = None,  # PROGRESS_EVERY_S
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.report, self.clock = url, report, clock
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.total = sum(f.size for f in files)
        self.files_total = len(files)
        self.finished = self.files_done = self.current = 0
        self.started = self.last = clock()
        self.reported = False

    def start_file(self) -> None:
        self.current = 0

    def set_size(self, size: int) -> None:
        """The object's size (known already, from the listing)."""

    def relative_update(self, inc: int = 1) -> None:
        self.current += inc
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self._report(done=False)

    def file_done(self, size: int) -> None:
        self.finished += size
        self.files_done += 1
        self.current = 0

    def end(self) -> None:
        if self.reported:
            self._report(done=True)

    def _report(self, *, done: bool) -> None:
        self.reported = True
        self.report(
            Fetching(
                self.url,
                min(self.finished + self.current, self.total),
                self.total,
                self.files_done,
                self.files_total,
                round(self.clock() - self.started, 3),
                done,
            )
        )


def fetch_corpus(
    url: str,
    cache_dir: Path,
    max_bytes: int,
    *,
    progress: Callable[[Fetching], None] | None = None,
) -> tuple[Path, str]:
    """Download a corpus once into ``cache_dir/<key>`` (key: the URL and each object's ETag,
    version and size) and return (root, path relative to it) to read it as a local corpus.
    Each object is streamed to disk (never whole in memory); the token cache is then keyed
    by the content digest, as for a local corpus. A folder complete from an earlier job is
    used again as it is. ``progress`` hears how far a long download has come (see
    :class:`DownloadMeter`)."""
    files = list_corpus(url, max_bytes)
    single = len(files) == 1 and files[0].url == url
    key = hashlib.sha256(
        json.dumps([url, [(f.name, f.version, f.size) for f in files]]).encode()
    ).hexdigest()[:32]
    root = cache_dir / key
    relative = files[0].name if single else "corpus"
    if (root / ".complete").is_file():
        os.utime(root / ".complete")  # its last use, for whoever sweeps
        return root, relative
    fs = store()
    partial = cache_dir / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    meter = DownloadMeter(url, files, progress) if progress is not None else None
    try:
        for f in files:
            target = partial / (f.name if single else f"corpus/{f.name}")
            retrying(
                "download",
                f.url,
                partial_call(download_file, fs, f.url, target, meter),
                missing=_C.CORPUS_NOT_FOUND,
            )
            if meter is not None:
                meter.file_done(f.size)
        if meter is not None:
            meter.end()
        versions = {f.name: f.version for f in files}
        (partial / ".complete").write_text(json.dumps(versions, sort_keys=True))
        with contextlib.suppress(OSError):  # another job fetched the same corpus meanwhile
            os.replace(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("storage.corpus_fetched", url=url, files=len(files), bytes=sum(f.size for f in files))
    return root, relative


def download_file(
    fs: ObjectStore, url: str, target: Path, meter: DownloadMeter | None = None
) -> None:
    """Fetch ``url`` into ``target`` through a temp file: s3fs streams the body to disk (as
    fast as boto3's transfer manager here, see bench/storage.py), never all in memory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target, os.getpid())
    try:
        if meter is None:
            fs.get_file(url, str(tmp))
        else:
            meter.start_file()
            fs.get_file(url, str(tmp), callback=meter)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def upload(fs: ObjectStore, local: Path, url: str, *, bound_s: float = RETRY_BOUND_S) -> None:
    """Put one file (multipart for large ones, by s3fs), retried while the store is away."""
    retrying("upload", url, lambda: fs.put_file(str(local), url), bound_s=bound_s)


def put_bytes(fs: ObjectStore, url: str, data: bytes, *, bound_s: float = RETRY_BOUND_S) -> None:
    retrying("upload", url, lambda: fs.pipe_file(url, data), bound_s=bound_s)


def download_tree(url: str, target: Path, *, missing: ModelTrainerErrorCode) -> Path:
    """Every object below ``url`` into ``target`` (an artifact folder, for ``sample``)."""
    fs = store()
    base = url.rstrip("/")
    try:
        found = fs.find(base, detail=True)
    except Exception as exc:
        raise typed(exc, url, missing=missing) from None
    if not found:
        raise ModelTrainerError(missing, f"nothing at {url}", details={"url": url})
    for name, meta in sorted(found.items()):
        relative = name[len(base.removeprefix(SCHEME)) + 1 :]
        if not is_object(name, meta) or not relative or relative.startswith(".."):
            continue
        retrying(
            "download",
            SCHEME + name,
            partial_call(download_file, fs, SCHEME + name, target / relative),
            missing=missing,
        )
    return target


def iter_names(fs: ObjectStore, url: str) -> Iterator[str]:
    """The names directly below ``url`` (none when there is nothing), listed afresh."""
    try:
        listed = fs.ls(url, detail=False, refresh=True)
    except FileNotFoundError:
        return
    for entry in listed:
        yield entry.rstrip("/").rsplit("/", 1)[-1]


def list_names(fs: ObjectStore, url: str) -> list[str]:
    return list(iter_names(fs, url))


def release_checkpoints(artifacts_url: str, job_id: str) -> None:
    """Delete an ended job's checkpoints from the store, in a thread of its own (the caller
    is the event loop). A failure leaves them for the next release: it costs storage only."""

    def remove() -> None:
        url = join(artifacts_url, job_id, "checkpoints")
        try:
            store().rm(url, recursive=True)
        except FileNotFoundError:
            return
        except Exception as exc:
            log.warning("storage.checkpoints_not_released", url=url, error=str(exc))

    threading.Thread(target=remove, name=f"release-{job_id}", daemon=True).start()
