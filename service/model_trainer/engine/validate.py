"""Refusing a job this worker cannot run, before any work: the service's admission checks
(:func:`model_trainer.core.admission.admit`) plus what only a worker knows (its CUDA)."""

from __future__ import annotations

from pathlib import Path

from model_trainer_contracts import SubmitJobV1

from model_trainer.core.admission import admit
from model_trainer.core.capabilities import CAPABILITIES
from model_trainer.core.memory import check_job_memory
from model_trainer.engine.placement import resolve_placement


def validate_job(
    job: SubmitJobV1,
    *,
    data_root: Path | None = None,
    artifacts_root: Path | None = None,
    cuda_available: bool | None = None,
    memory_budget_mb: int | None = None,
) -> None:
    """Raise the refusal (stage ``validate``) for a job this worker cannot run; else None.

    The memory check uses the device and precision this worker resolves (a CUDA worker
    holds only the data in host memory)."""
    admit(job, data_root=data_root, artifacts_root=artifacts_root, cuda_available=cuda_available)
    placed = resolve_placement(
        job.training, CAPABILITIES[job.backend], cuda_available=cuda_available
    )
    if memory_budget_mb is not None:
        check_job_memory(
            job,
            memory_budget_mb,
            data_root=data_root,
            artifacts_root=artifacts_root,
            device=placed.device.type,
            precision=placed.precision,
        )
