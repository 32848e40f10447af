"""Model folders and artifacts named by URL: a ``pretrained`` model's ``path`` and ``init_from``.

A folder in object storage is brought to local disk, into the download cache beside the
fetched corpora (``<artifacts root>/.downloads/<key>``, ``key`` from the URL and every
object's name, ETag, version and size), and from there it is checked and loaded exactly as a
local folder is (:mod:`.pretrained`'s confinement and format rules, the artifact's manifest).

Two copies, so that acceptance stays cheap:

* the **head** copy, made at acceptance (the service): every object whole except the
  safetensors files, of which only the header (the 8-byte length and its JSON, two ranged
  GETs) is written, and files over :data:`HEAD_FILE_LIMIT`, written empty. Every check a
  local folder gets (names, config, index, tokenizer, parameter counts, chat template) reads
  only these, so acceptance costs a LIST and a few small GETs whatever the model's size;
* the **full** copy, made by the worker before it loads: every object streamed to disk
  (never whole in memory), pickled weights excepted (they are never read: empty files keep
  their names for the checks).

Object names are the boundary here, as symlinks are for a local folder: a key below the URL
whose relative name is absolute, empty or has a ``.`` or ``..`` part would land outside the
copy, so it refuses the folder with PATH_NOT_ALLOWED before anything is fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode

from . import storage

_C = ModelTrainerErrorCode
log = structlog.get_logger()
HEAD_FILE_LIMIT = 64 << 20  # a head copy holds files up to this size (config, tokenizer...)
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
COMPLETE = ".complete"


@dataclass
class _Downloads:
    folder: Path | None = None  # None: a folder in the system's temp directory
    full: bool = False


_downloads = _Downloads()


def use_downloads(folder: Path | None, *, full: bool) -> None:
    """Where this process keeps fetched folders (None: in the system's temp directory), and
    whether it needs loadable copies (a worker: full) or only what acceptance checks (the
    service: head copies)."""
    _downloads.folder = folder
    _downloads.full = full


def _cache() -> Path:
    if _downloads.folder is not None:
        return _downloads.folder
    return Path(tempfile.gettempdir()) / f"model-trainer-downloads-{os.getuid()}"


def local_folder(
    url: str,
    *,
    field: str,
    missing: ModelTrainerErrorCode,
    placeholders: Collection[str] = (),
) -> Path:
    """The local copy of the folder at ``url`` (head or full, as this process needs; a full
    copy serves for a head one). ``placeholders``: suffixes of files never read, written
    empty. PATH_NOT_ALLOWED (a URL with credentials, an object name leading outside),
    ``missing`` (nothing there), STORAGE_ACCESS_DENIED, STORAGE_UNAVAILABLE."""
    storage.check_url(url, field=field)
    full = _downloads.full
    fs = storage.store(probe=not full)
    base = url.rstrip("/")
    try:
        found = fs.find(base, detail=True)
    except Exception as exc:
        raise storage.typed(exc, url, missing=missing) from None
    prefix = base.removeprefix(storage.SCHEME) + "/"
    files: list[storage.RemoteFile] = []
    for name, meta in sorted(found.items()):
        if not storage.is_object(name, meta):
            continue
        if name == prefix[:-1]:  # the URL names one object, not a folder
            raise ModelTrainerError(
                missing, f"{url} is an object, not a folder", details={field: url}
            )
        relative = relative_name(name, prefix, url)
        size = meta.get("size")
        version = f"{meta.get('ETag') or ''}:{meta.get('VersionId') or ''}"
        files.append(
            storage.RemoteFile(
                relative, storage.SCHEME + name, size if isinstance(size, int) else 0, version
            )
        )
    if not files:
        raise ModelTrainerError(missing, f"nothing at {url}", details={field: url})
    key = hashlib.sha256(
        json.dumps([url, [(f.name, f.version, f.size) for f in files]]).encode()
    ).hexdigest()[:32]
    cache = _cache()
    whole, head = cache / key, cache / f"{key}.head"
    for ready in (whole,) if full else (whole, head):
        if (ready / COMPLETE).is_file():
            os.utime(ready / COMPLETE)  # its last use, for whoever sweeps
            return ready.resolve()
    root = whole if full else head
    # Per process and thread: the service checks two submits at once, in two threads.
    partial_dir = cache / f".{root.name}.{os.getpid()}-{threading.get_ident()}.partial"
    shutil.rmtree(partial_dir, ignore_errors=True)
    suffixes = tuple(placeholders)
    try:
        for f in files:
            target = partial_dir / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not full and f.name.endswith(".safetensors"):
                target.write_bytes(safetensors_head(fs, f.url, f.size, missing))
                continue
            if f.name.endswith(suffixes) or (not full and f.size > HEAD_FILE_LIMIT):
                target.write_bytes(b"")  # never read here: the name is what counts
                continue
            storage.retrying(
                "download",
                f.url,
                partial(storage.download_file, fs, f.url, target),
                missing=missing,
                bound_s=storage.RETRY_BOUND_S if full else 0.0,
            )
        (partial_dir / COMPLETE).write_text(json.dumps({f.name: f.version for f in files}))
        install(partial_dir, root)
    finally:
        shutil.rmtree(partial_dir, ignore_errors=True)
    log.info(
        "storage.folder_fetched",
        url=url,
        copy="full" if full else "head",
        files=len(files),
        bytes=sum(f.size for f in files),
    )
    return root.resolve()


def relative_name(name: str, prefix: str, url: str) -> str:
    """A listed object's name below the folder's ``prefix`` (``bucket/key/``), where the copy
    writes it: PATH_NOT_ALLOWED when that would land outside the copy (a name outside the
    prefix, an empty, ``.`` or ``..`` part, a backslash). Some stores normalise such keys
    away, others (AWS) keep them as they are."""
    relative = name[len(prefix) :]
    parts = relative.split("/")
    outside = not name.startswith(prefix) or "\\" in relative
    if outside or any(part in ("", ".", "..") for part in parts):
        raise ModelTrainerError(
            _C.PATH_NOT_ALLOWED,
            f"the object {relative!r} below {url} leads outside the folder",
            details={"path": url, "file": relative[:300]},
        )
    return relative


def install(partial_dir: Path, root: Path) -> None:
    """Rename a finished copy into place; a complete copy already there (another process
    fetched the same folder meanwhile) is as good, anything else there is the OSError."""
    try:
        os.replace(partial_dir, root)
    except OSError:
        if not (root / COMPLETE).is_file():
            raise


def safetensors_head(
    fs: storage.ObjectStore, url: str, size: int, missing: ModelTrainerErrorCode
) -> bytes:
    """The first bytes of a safetensors object, up to the end of its JSON header (what
    parameter counts and tensor shapes are read from); the object's own bytes when it is too
    short to have one (the checks then refuse it as they would locally)."""
    try:
        length = fs.cat_file(url, start=0, end=min(8, size))
        if len(length) < 8:
            return length
        (header,) = struct.unpack("<Q", length)
        if header > _MAX_HEADER_BYTES or 8 + header > size:
            return length  # refused by the header check, as locally
        return length + fs.cat_file(url, start=8, end=8 + header)
    except Exception as exc:
        raise storage.typed(exc, url, missing=missing) from None
