"""Where a job's files live: the names both the service and the engine rely on."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

from model_trainer_contracts import EventBase, ModelTrainerError, ModelTrainerErrorCode

MANIFEST = "manifest.json"  # written last: its presence means the artifact is complete
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"  # every event of the job, one JSON line each, as published
TOKENIZER_FILE = "tokenizer.json"
STAGING = ".staging"  # in the job folder: the artifact's files before they are renamed into place
CACHE_DIR = ".token-cache"  # in the artifacts root: tokenized corpora, shared by jobs
DOWNLOADS = ".downloads"  # in the artifacts root: corpora fetched from object storage
# An atomic write goes to ".<name>.<pid>.tmp" beside its target first: one a killed writer
# left behind is recognised (and swept) by this pattern.
TEMP_NAME = re.compile(r"^\..+\.[0-9]+\.tmp$")


def resolved(path: Path) -> Path:
    """``path`` with symlinks resolved; a symlink loop is the OSError (ELOOP) it is from Python
    3.13 on, not the RuntimeError earlier versions raise."""
    try:
        return path.resolve()
    except RuntimeError as exc:
        raise OSError(errno.ELOOP, "Too many levels of symbolic links", str(path)) from exc


def resolve_inside(root: Path, relative: str, *, field: str = "corpus_path") -> Path:
    """``root / relative`` with symlinks resolved; PATH_NOT_ALLOWED when it leaves ``root``
    (``field`` names the offending spec field in the message and details)."""
    base = root.resolve()
    target = resolved(base / relative)
    if not target.is_relative_to(base):
        what = "corpus path" if field == "corpus_path" else field
        raise ModelTrainerError(
            ModelTrainerErrorCode.PATH_NOT_ALLOWED,
            f"{what} {relative!r} leaves the data root",
            details={field: relative},
        )
    return target


def temp_path(path: Path, pid: int) -> Path:
    """Where an atomic write of ``path`` by process ``pid`` writes before the rename."""
    return path.with_name(f".{path.name}.{pid}.tmp")


def release_checkpoints(job_dir: Path) -> None:
    """Remove an ended job's checkpoints: call once its terminal event is committed."""
    shutil.rmtree(job_dir / CHECKPOINTS, ignore_errors=True)


def append_metrics(job_dir: Path, event: EventBase) -> None:
    """Append a published event to the job's ``metrics.jsonl`` (its folder is created)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    with open(job_dir / METRICS, "a", encoding="utf-8") as out:
        out.write(event.model_dump_json() + "\n")
