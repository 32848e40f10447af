"""The finished artifact in the job folder, and the job's metrics log.

Layout of ``<artifacts_root>/<job_id>/``:

* weights and model config (``model.safetensors``, ``config.json``; for gpt2 a stock
  transformers checkpoint), ``tokenizer.json`` and ``tokenizer_config.json``;
* ``manifest.json``: the job spec, the resolved run configuration, final metrics, library
  versions, and the sha256 of every other file, written last and atomically;
* ``metrics.jsonl``: every config and progress event, appended as emitted. The runtime appends
  the terminal event after the manifest exists, so this file is *not* in the manifest's digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from pydantic import JsonValue
from torch import nn

from model_trainer.core.layout import CHECKPOINTS, MANIFEST, METRICS, STAGING
from model_trainer.engine.backend import Backend
from model_trainer.engine.files import atomic_write_bytes, sha256_file
from model_trainer.engine.tokenizer import TextTokenizer

NOT_DIGESTED = (MANIFEST, METRICS, CHECKPOINTS)
_LIBRARIES = ("model-trainer", "model-trainer-contracts", "torch", "transformers", "tokenizers")
_MORE_LIBRARIES = ("numpy", "safetensors")


def library_versions() -> dict[str, JsonValue]:
    found: dict[str, JsonValue] = {"python": platform.python_version()}
    for name in _LIBRARIES + _MORE_LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_artifact(
    job_dir: Path,
    backend: Backend,
    model: nn.Module,
    tokenizer: TextTokenizer,
    manifest: dict[str, JsonValue],
    *,
    attempt: int = 1,
    check: Callable[[], None] = lambda: None,
) -> str:
    """Write weights, tokenizer and ``manifest.json`` (extended with file digests and library
    versions); returns the manifest's sha256.

    Files are written into a staging folder and renamed into place, the manifest last: a
    folder with a manifest holds a complete artifact. The checkpoints stay: whoever publishes
    the completed event removes them once it is committed (a crash before that resumes from
    the final checkpoint instead of training again).

    Each attempt stages in its own ``.staging/attempt-<n>``, and ``check`` runs (raising when
    a later attempt owns the job) before anything is renamed into place: a superseded run
    drops its staging and never touches the job folder."""
    job_dir.mkdir(parents=True, exist_ok=True)
    staging = job_dir / STAGING / f"attempt-{attempt}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    backend.save_weights(model, staging)
    tokenizer.save_pretrained(staging)
    for folder in (p for p in staging.iterdir() if p.is_dir()):  # merged weights, loadable alone
        tokenizer.save_pretrained(folder)
    try:
        check()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for written in sorted(staging.iterdir()):
        if written.is_dir():  # one an earlier attempt left is replaced whole
            shutil.rmtree(job_dir / written.name, ignore_errors=True)
        os.replace(written, job_dir / written.name)
    staging.rmdir()
    with contextlib.suppress(OSError):  # another attempt may still be staging
        staging.parent.rmdir()
    files: dict[str, JsonValue] = {
        path.relative_to(job_dir).as_posix(): sha256_file(path)
        for path in sorted(job_dir.rglob("*"))
        if path.is_file()
        and path.relative_to(job_dir).parts[0] not in NOT_DIGESTED
        and not any(part.startswith(".") for part in path.relative_to(job_dir).parts)
    }
    full: dict[str, JsonValue] = {
        **manifest,
        "versions": library_versions(),
        "files": files,
        "not_digested": {
            METRICS: "every published event of the job, appended by whoever publishes them",
            MANIFEST: "this file",
        },
    }
    body = (json.dumps(full, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(job_dir / MANIFEST, body)
    return hashlib.sha256(body).hexdigest()


def read_manifest(artifact_dir: Path) -> dict[str, JsonValue]:
    """The parsed ``manifest.json``; raises OSError or ValueError when absent or not an object."""
    parsed: JsonValue = json.loads((artifact_dir / MANIFEST).read_text(encoding="utf-8"))
    if not isinstance(parsed, dict):
        raise ValueError("manifest.json is not an object")
    return parsed
