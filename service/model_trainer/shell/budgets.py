"""Service-wide limits a job must fit at acceptance: step and evaluation caps, and disk.

:func:`admit_limits` runs beside :func:`~model_trainer.core.admission.admit` for every submit,
torch-free. Each refusal is RESOURCE_LIMIT_EXCEEDED with the figures in its details:

* ``training.max_steps`` over ``max_job_steps``, ``training.eval_batches`` over
  ``max_eval_batches``, ``training.checkpoint_every`` under ``min_checkpoint_every`` (a
  checkpoint at every step writes the model and its optimizer state that often);
* disk: the job's estimated peak on disk (:func:`disk_estimate`) over ``job_disk_budget_mb``,
  over what ``artifacts_budget_mb`` leaves beside what the artifacts root holds now, or over
  the volume's free space less ``disk_reserve_mb``.

The estimate is what a run writes at its peak: three checkpoints (the latest, the previous one
kept in case the latest is damaged, and the next being written), each the fp32 weights and the
optimizer's moments; the artifact's fp32 weights; and the token cache's ids (4 bytes a token,
at most one token a corpus byte). Jobs already queued or running are not reserved: the free
space is measured at acceptance, and a run that still meets a full disk ends with DISK_FULL,
which the service answers by handing the job back with its last good checkpoint (the book's
``_disk_full``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from model_trainer_contracts import (
    ModelTrainerError,
    ModelTrainerErrorCode,
    PretrainedModel,
    SubmitJobV1,
)
from pydantic import JsonValue

from model_trainer.core.capabilities import footprint
from model_trainer.core.memory import MIB, corpus_bytes, vocabulary
from model_trainer.core.pretrained import inspect_pretrained
from model_trainer.core.trainjob import check_nodes
from model_trainer.settings import Settings

_C = ModelTrainerErrorCode
CHECKPOINTS_AT_PEAK = 3
TOKEN_BYTES = 4
USAGE_TTL_S = 30.0  # the artifacts root's size is walked at most this often
_usage: dict[Path, tuple[float, int]] = {}


@dataclass(frozen=True)
class DiskEstimate:
    """A job's peak bytes on disk, by part."""

    parameters: int
    checkpoints: int
    artifact: int
    token_cache: int

    @property
    def total(self) -> int:
        return self.checkpoints + self.artifact + self.token_cache

    def details(self) -> dict[str, JsonValue]:
        return {
            "estimate_mb": _mb(self.total),
            "checkpoints_mb": _mb(self.checkpoints),
            "artifact_mb": _mb(self.artifact),
            "token_cache_mb": _mb(self.token_cache),
            "parameters": self.parameters,
        }


def _mb(size: int) -> int:
    return -(-size // MIB)


def _refuse(message: str, details: dict[str, JsonValue]) -> ModelTrainerError:
    return ModelTrainerError(_C.RESOURCE_LIMIT_EXCEEDED, message, details=details)


def check_caps(job: SubmitJobV1, settings: Settings) -> None:
    """The step, evaluation and checkpoint caps."""
    tr = job.training
    over = [
        ("training.max_steps", tr.max_steps, settings.max_job_steps),
        ("training.eval_batches", tr.eval_batches, settings.max_eval_batches),
        # A job's processes each take a worker slot at once: more than the instance has
        # would wait forever.
        ("resources.processes", job.resources.processes, settings.workers),
    ]
    for name, value, limit in over:
        if value is not None and value > limit:
            raise _refuse(
                f"{name} {value} is over this service's limit of {limit}",
                {"field": name, "value": value, "limit": limit},
            )
    every = tr.checkpoint_every
    if every is not None and every < settings.min_checkpoint_every:
        raise _refuse(
            f"training.checkpoint_every {every} is under this service's minimum of "
            f"{settings.min_checkpoint_every}",
            {
                "field": "training.checkpoint_every",
                "value": every,
                "limit": settings.min_checkpoint_every,
            },
        )


def disk_estimate(job: SubmitJobV1, *, data_root: Path, artifacts_root: Path) -> DiskEstimate:
    """The job's peak bytes on disk (see the module docstring)."""
    if isinstance(job.model, PretrainedModel):
        parameters = inspect_pretrained(data_root, job.model.path).parameters
    else:
        vocab = vocabulary(job, artifacts_root).size
        parameters = footprint(job.model, vocab, half=False).parameters
    tr = job.training
    moments = 2 if tr.optimizer == "adamw" else 1 if tr.momentum > 0 else 0
    checkpoint = 4 * parameters * (1 + moments)
    return DiskEstimate(
        parameters=parameters,
        checkpoints=CHECKPOINTS_AT_PEAK * checkpoint,
        artifact=4 * parameters,
        token_cache=TOKEN_BYTES * corpus_bytes(job, data_root),
    )


def tree_bytes(root: Path) -> int:
    """Bytes the files under ``root`` hold (symlinks not followed); 0 when it is missing."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while walked
                continue
    return total


def artifacts_usage(root: Path, now: float | None = None) -> int:
    """:func:`tree_bytes` of the artifacts root, walked again after ``USAGE_TTL_S``."""
    now = time.monotonic() if now is None else now
    known = _usage.get(root)
    if known is None or now - known[0] > USAGE_TTL_S:
        known = (now, tree_bytes(root))
        _usage[root] = known
    return known[1]


def free_bytes(root: Path) -> int:
    """Free bytes on the volume of ``root`` (or of its nearest existing parent)."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk(job: SubmitJobV1, settings: Settings) -> DiskEstimate:
    """The job's disk estimate, or the refusal when it cannot fit."""
    found = disk_estimate(job, data_root=settings.data_root, artifacts_root=settings.artifacts_root)
    need = found.total
    if settings.job_disk_budget_mb is not None and need > settings.job_disk_budget_mb * MIB:
        raise _refuse(
            f"the job needs about {_mb(need)} MB on disk; one job may use "
            f"{settings.job_disk_budget_mb} MB",
            {**found.details(), "budget_mb": settings.job_disk_budget_mb, "budget": "job"},
        )
    if settings.artifacts_budget_mb is not None:
        used = artifacts_usage(settings.artifacts_root)
        left = settings.artifacts_budget_mb * MIB - used
        if need > left:
            raise _refuse(
                f"the job needs about {_mb(need)} MB on disk; the artifacts root has "
                f"{max(0, _mb(left))} MB left of its {settings.artifacts_budget_mb} MB",
                {
                    **found.details(),
                    "budget_mb": settings.artifacts_budget_mb,
                    "used_mb": _mb(used),
                    "budget": "artifacts_root",
                },
            )
    free = free_bytes(settings.artifacts_root) - settings.disk_reserve_mb * MIB
    if need > free:
        raise _refuse(
            f"the job needs about {_mb(need)} MB on disk; the artifacts volume has "
            f"{max(0, free // MIB)} MB free above its {settings.disk_reserve_mb} MB reserve",
            {
                **found.details(),
                "free_mb": max(0, free // MIB),
                "reserve_mb": settings.disk_reserve_mb,
                "budget": "volume",
            },
        )
    return found


def admit_limits(job: SubmitJobV1, settings: Settings) -> None:
    """The caps, then the disk: RESOURCE_LIMIT_EXCEEDED when the job cannot fit."""
    check_nodes(job)  # several nodes: a Kubeflow TrainJob's, never one instance's
    check_caps(job, settings)
    check_disk(job, settings)


def disk_problem(settings: Settings) -> str | None:
    """Why the artifacts volume is nearly full (free space under the reserve), else None."""
    free = free_bytes(settings.artifacts_root)
    if free >= settings.disk_reserve_mb * MIB:
        return None
    return (
        f"the artifacts volume has {free // MIB} MB free, under its "
        f"{settings.disk_reserve_mb} MB reserve (disk_reserve_mb): new jobs are refused"
    )
