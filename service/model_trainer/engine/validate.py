"""Refusing a job its backend cannot run, cheaply and before any work."""

from __future__ import annotations

from pathlib import Path

from model_trainer_contracts import (
    JobTokenizer,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
)

from model_trainer.engine.artifact import MANIFEST
from model_trainer.engine.corpus import resolve_inside
from model_trainer.engine.placement import resolve_placement
from model_trainer.engine.registry import create_backend
from model_trainer.engine.tokenizer import TOKENIZER_FILE

_C = ModelTrainerErrorCode


def validate_job(
    job: SubmitJobV1,
    *,
    data_root: Path | None = None,
    artifacts_root: Path | None = None,
    cuda_available: bool | None = None,
) -> None:
    """Raise the refusal (stage ``validate``) for a job this worker cannot run; else None.

    Checks, in order: the backend exists (UNSUPPORTED_BACKEND); it accepts the tokenizer kind
    and fine-tuning if asked (UNSUPPORTED_BACKEND); the model's shape is within its bounds
    (INVALID_MODEL_SIZE); device and precision (CUDA_NOT_AVAILABLE, UNSUPPORTED_BACKEND); job
    ids used as folder names (PATH_NOT_ALLOWED). Given ``data_root``: the corpus path stays
    inside it (PATH_NOT_ALLOWED) and exists (CORPUS_NOT_FOUND). Given ``artifacts_root``: the
    init_from artifact (MODEL_NOT_FOUND) and a job tokenizer (TOKENIZER_NOT_FOUND) exist.
    Reads no corpus and builds no model.
    """
    backend = create_backend(job.backend)
    caps = backend.capabilities
    kind = job.tokenizer.kind
    if kind != "job" and kind not in caps.tokenizers:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"backend {job.backend!r} cannot use a {kind} tokenizer",
            details={"backend": job.backend, "tokenizer": kind},
        )
    if job.init_from is not None and not caps.can_finetune:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND, f"backend {job.backend!r} cannot fine-tune (init_from)"
        )
    context, params = backend.context_length(job.model), backend.core_parameters(job.model)
    if context > caps.max_context or params > caps.max_parameters:
        raise ModelTrainerError(
            _C.INVALID_MODEL_SIZE,
            f"{params} parameters and a context of {context} exceed the bounds of "
            f"{job.backend!r} ({caps.max_parameters} and {caps.max_context})",
            details={
                "parameters": params,
                "max_parameters": caps.max_parameters,
                "context": context,
                "max_context": caps.max_context,
            },
        )
    resolve_placement(job.training, caps, cuda_available=cuda_available)
    referenced = [job.job_id, job.init_from]
    if isinstance(job.tokenizer, JobTokenizer):
        referenced.append(job.tokenizer.job_id)
    for job_id in referenced:
        if job_id in {".", ".."}:
            raise ModelTrainerError(_C.PATH_NOT_ALLOWED, f"job id {job_id!r} cannot name a folder")
    if data_root is not None and job.data.corpus_path is not None:
        target = resolve_inside(data_root, job.data.corpus_path)
        if not target.exists():
            raise ModelTrainerError(
                _C.CORPUS_NOT_FOUND,
                f"no corpus file or directory at {job.data.corpus_path!r}",
                details={"corpus_path": job.data.corpus_path},
            )
    if artifacts_root is not None:
        _check_references(job, artifacts_root)


def _check_references(job: SubmitJobV1, artifacts_root: Path) -> None:
    if job.init_from is not None and not (artifacts_root / job.init_from / MANIFEST).is_file():
        raise ModelTrainerError(
            _C.MODEL_NOT_FOUND,
            f"job {job.init_from!r} has no artifact",
            details={"init_from": job.init_from},
        )
    tok = job.tokenizer
    if (
        isinstance(tok, JobTokenizer)
        and not (artifacts_root / tok.job_id / TOKENIZER_FILE).is_file()
    ):
        raise ModelTrainerError(
            _C.TOKENIZER_NOT_FOUND,
            f"job {tok.job_id!r} has no tokenizer",
            details={"job_id": tok.job_id},
        )
