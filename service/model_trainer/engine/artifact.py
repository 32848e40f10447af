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

import hashlib
import json
import platform
import shutil
from importlib import metadata
from pathlib import Path

from pydantic import JsonValue
from torch import nn

from model_trainer.core.layout import CHECKPOINTS, MANIFEST, METRICS
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
) -> str:
    """Write weights, tokenizer and ``manifest.json`` (extended with file digests and library
    versions); remove the checkpoints, now redundant. Returns the manifest's sha256."""
    job_dir.mkdir(parents=True, exist_ok=True)
    backend.save_weights(model, job_dir)
    tokenizer.save_pretrained(job_dir)
    files: dict[str, JsonValue] = {
        path.relative_to(job_dir).as_posix(): sha256_file(path)
        for path in sorted(job_dir.rglob("*"))
        if path.is_file()
        and path.relative_to(job_dir).parts[0] not in NOT_DIGESTED
        and not path.name.startswith(".")
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
    shutil.rmtree(job_dir / CHECKPOINTS, ignore_errors=True)
    return hashlib.sha256(body).hexdigest()


def read_manifest(artifact_dir: Path) -> dict[str, JsonValue]:
    """The parsed ``manifest.json``; raises OSError or ValueError when absent or not an object."""
    parsed: JsonValue = json.loads((artifact_dir / MANIFEST).read_text(encoding="utf-8"))
    if not isinstance(parsed, dict):
        raise ValueError("manifest.json is not an object")
    return parsed
