"""Checkpoints and artifacts in object storage, under ``MODEL_TRAINER_ARTIFACTS_URL``.

The local files stay the working copy; the store holds what another node needs::

    <url>/<job_id>/checkpoints/attempt-<n>/CLAIM                  the attempt's fence
    <url>/<job_id>/checkpoints/attempt-<n>/step-<step>/checkpoint.pt
    <url>/<job_id>/checkpoints/attempt-<n>/step-<step>/manifest.json   written last
    <url>/<job_id>/<artifact files>, manifest.json written last

A checkpoint exists once its manifest (step, size, sha256) is there: a partial upload is
never read, and a download is checked against the manifest's digest before it is used (an
older complete one is tried next). The previous step's checkpoint is deleted only after the
new one's manifest is written, so a failed upload keeps the last good one. An artifact is
likewise complete once its manifest is uploaded, which happens before the completed event
is built: no event ever points at a partial artifact.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue

from model_trainer.core import storage
from model_trainer.core.layout import MANIFEST
from model_trainer.engine.files import atomic_write_bytes

_C = ModelTrainerErrorCode
log = structlog.get_logger()
CLAIM = "CLAIM"
STEP = re.compile(r"^step-([0-9]+)$")
ATTEMPT = re.compile(r"^attempt-([0-9]+)$")
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class Found:
    attempt: int
    step: int
    url: str  # the step folder


class RemoteCheckpoints:
    """One attempt's checkpoints in the store; see the module's layout."""

    def __init__(self, base_url: str, job_id: str, attempt: int, bound_s: float) -> None:
        self.root = storage.join(base_url, job_id, "checkpoints")
        self.attempt = attempt
        self.folder = storage.join(self.root, f"attempt-{attempt}")
        self.bound_s = bound_s
        self.fs = storage.store()

    def _attempts(self) -> list[int]:
        names = storage.retrying(
            "list",
            self.root,
            partial(storage.list_names, self.fs, self.root),
            bound_s=self.bound_s,
        )
        return sorted(int(m.group(1)) for n in names if (m := ATTEMPT.match(n)))

    def superseded_by(self) -> int | None:
        higher = [n for n in self._attempts() if n > self.attempt]
        return max(higher) if higher else None

    def claim(self) -> None:
        storage.put_bytes(self.fs, storage.join(self.folder, CLAIM), b"", bound_s=self.bound_s)

    def newest(self, *, up_to: int) -> list[Found]:
        """Complete checkpoints of attempts up to ``up_to``, newest first."""
        found: list[Found] = []
        for attempt in sorted((n for n in self._attempts() if n <= up_to), reverse=True):
            folder = storage.join(self.root, f"attempt-{attempt}")
            names = storage.retrying(
                "list",
                folder,
                partial(storage.list_names, self.fs, folder),
                bound_s=self.bound_s,
            )
            steps = sorted((int(m.group(1)) for n in names if (m := STEP.match(n))), reverse=True)
            for step in steps:
                url = storage.join(folder, f"step-{step}")
                listed = storage.retrying(
                    "list", url, partial(storage.list_names, self.fs, url), bound_s=self.bound_s
                )
                if MANIFEST in listed:
                    found.append(Found(attempt, step, url))
        return found

    def download(self, found: Found, target: Path) -> bool:
        """Fetch ``found`` as ``target`` (and its digest file) when its bytes match its
        manifest; False when they don't (a damaged upload: try an older one)."""
        manifest = _parse(
            storage.retrying(
                "download",
                found.url,
                lambda: self.fs.cat_file(storage.join(found.url, MANIFEST)),
                bound_s=self.bound_s,
            )
        )
        storage.retrying(
            "download",
            found.url,
            lambda: storage.download_file(self.fs, storage.join(found.url, CHECKPOINT), target),
            bound_s=self.bound_s,
        )
        digest = storage.file_sha256(target)
        if digest != manifest.get("sha256"):
            log.warning("engine.remote_checkpoint_damaged", url=found.url)
            target.unlink(missing_ok=True)
            return False
        atomic_write_bytes(target.with_name(target.name + ".sha256"), digest.encode())
        log.info("engine.remote_checkpoint_fetched", url=found.url, step=found.step)
        return True

    def upload(self, local: Path, step: int, sha256: str) -> None:
        """Upload the checkpoint of ``step``, its manifest last, then drop all but the
        previous step's (the last good one stays until this one is complete)."""
        url = storage.join(self.folder, f"step-{step}")
        storage.upload(self.fs, local, storage.join(url, CHECKPOINT), bound_s=self.bound_s)
        manifest: dict[str, JsonValue] = {
            "step": step,
            "attempt": self.attempt,
            "size": local.stat().st_size,
            "sha256": sha256,
        }
        body = json.dumps(manifest, sort_keys=True).encode()
        storage.put_bytes(self.fs, storage.join(url, MANIFEST), body, bound_s=self.bound_s)
        try:
            names = storage.list_names(self.fs, self.folder)
            steps = sorted((int(m.group(1)) for n in names if (m := STEP.match(n))), reverse=True)
            for old in steps[2:]:
                self.fs.rm(storage.join(self.folder, f"step-{old}"), recursive=True)
        except Exception as exc:  # a leftover costs storage, never correctness
            log.warning("engine.remote_checkpoints_not_pruned", error=str(exc))


def _parse(
    body: bytes,
    code: ModelTrainerErrorCode = _C.CHECKPOINT_CORRUPT,
    what: str = "a remote checkpoint manifest",
) -> dict[str, JsonValue]:
    try:
        parsed: JsonValue = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ModelTrainerError(code, f"{what} is damaged")
    return parsed


def publish_artifact(job_dir: Path, url: str, bound_s: float) -> str:
    """Upload the artifact's files (those its manifest lists), ``manifest.json`` last;
    returns the artifact's URL."""
    manifest = _parse(
        (job_dir / MANIFEST).read_bytes(), _C.ARTIFACT_WRITE_FAILED, "the artifact manifest"
    )
    files = manifest.get("files")
    names = sorted(files) if isinstance(files, dict) else []
    fs = storage.store()
    for name in names:
        if name != MANIFEST:
            storage.upload(fs, job_dir / name, storage.join(url, name), bound_s=bound_s)
    storage.upload(fs, job_dir / MANIFEST, storage.join(url, MANIFEST), bound_s=bound_s)
    log.info("engine.artifact_uploaded", url=url, files=len(names))
    return url
