"""Refusing a job at acceptance: cheap checks, no torch, no corpus read, no model built.

The service calls :func:`admit` for every submit before it queues the job, so an invalid job
is answered in milliseconds with its typed code. Workers run the same checks again (plus the
ones only they can make, such as CUDA) before any work.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from model_trainer_contracts import (
    JobTokenizer,
    ModelTrainerError,
    ModelTrainerErrorCode,
    PretrainedModel,
    SubmitJobV1,
    TrainingSpec,
)
from pydantic import JsonValue

from .capabilities import CAPABILITIES, Capabilities, context_length, core_parameters
from .distributed import check_resources
from .finetune import check_finetune
from .layout import MANIFEST, TOKENIZER_FILE, resolve_inside
from .memory import check_job_memory, placement
from .pretrained import confined_folder, inspect_pretrained
from .storage import is_url, list_corpus

_C = ModelTrainerErrorCode


def admit(
    job: SubmitJobV1,
    *,
    data_root: Path | None = None,
    artifacts_root: Path | None = None,
    cuda_available: bool | None = None,
    shared_artifacts: bool = True,
    memory_budget_mb: int | None = None,
    max_corpus_bytes: int = 1 << 30,
) -> None:
    """Raise the refusal (stage ``validate``) for a job that cannot run; else None.

    In order: the backend accepts the tokenizer kind, fine-tuning and compiling
    (UNSUPPORTED_BACKEND); the model's shape is within its bounds (INVALID_MODEL_SIZE);
    device and precision (CUDA_NOT_AVAILABLE when ``cuda_available`` is False,
    UNSUPPORTED_BACKEND). An ``s3://`` corpus exists, is readable with the service's
    credentials and is neither empty nor over ``max_corpus_bytes`` (CORPUS_NOT_FOUND,
    STORAGE_ACCESS_DENIED, STORAGE_UNAVAILABLE, CORPUS_EMPTY, CORPUS_TOO_LARGE). Given
    ``data_root``: the corpus path stays inside it
    (PATH_NOT_ALLOWED) and exists (CORPUS_NOT_FOUND); a pretrained model folder passes
    :func:`~model_trainer.core.pretrained.inspect_pretrained` and fits the bounds and its own
    position limit (INVALID_MODEL_SIZE). Given ``artifacts_root``: the init_from artifact
    (MODEL_NOT_FOUND) and a job tokenizer (TOKENIZER_NOT_FOUND) exist, and, unless
    ``shared_artifacts`` (the service passes its setting), belong to the job's own user
    (JOB_FORBIDDEN). Given ``memory_budget_mb``: the job's estimated peak memory
    (:mod:`.memory`) fits in it (RESOURCE_LIMIT_EXCEEDED).
    """
    caps = CAPABILITIES[job.backend]  # the contracts' backends are the table's keys
    kind = job.tokenizer.kind
    if kind not in caps.tokenizers:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"backend {job.backend!r} cannot use a {kind} tokenizer",
            details={"backend": job.backend, "tokenizer": kind},
        )
    if job.init_from is not None and not caps.can_finetune:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND, f"backend {job.backend!r} cannot fine-tune (init_from)"
        )
    if job.training.compile in ("on", True) and not caps.can_compile:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"backend {job.backend!r} cannot be compiled (training.compile)",
            details={"backend": job.backend},
        )
    context, params = context_length(job.model), core_parameters(job.model)
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
    check_placement(job.training, caps, cuda_available=cuda_available)
    check_resources(job, caps, cuda_available=cuda_available)
    with _usable_paths(job):
        _check_files(
            job,
            caps,
            data_root,
            artifacts_root,
            cuda_available,
            shared_artifacts,
            memory_budget_mb,
            max_corpus_bytes,
        )


@contextlib.contextmanager
def _usable_paths(job: SubmitJobV1) -> Iterator[None]:
    """What the OS says of a path the job names (too long, a NUL byte, a symlink loop, no
    permission) refuses the job with PATH_NOT_ALLOWED and the OS's reason."""
    try:
        yield
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ModelTrainerError(
            _C.PATH_NOT_ALLOWED,
            f"a path the job names cannot be used: {reason}",
            details={"corpus_path": job.data.corpus_path, "reason": reason[:300]},
        ) from None


def _check_files(
    job: SubmitJobV1,
    caps: Capabilities,
    data_root: Path | None,
    artifacts_root: Path | None,
    cuda_available: bool | None,
    shared_artifacts: bool,
    memory_budget_mb: int | None,
    max_corpus_bytes: int,
) -> None:
    check_finetune(job, data_root)
    if is_url(job.data.corpus_path) and job.data.corpus_path is not None:
        # HEAD (or a list for a prefix) with short timeouts: missing bucket or object,
        # refused credentials, an empty or oversized corpus are answered at acceptance.
        list_corpus(job.data.corpus_path, max_corpus_bytes)
    elif data_root is not None and job.data.corpus_path is not None:
        target = resolve_inside(data_root, job.data.corpus_path)
        if not target.exists():
            raise ModelTrainerError(
                _C.CORPUS_NOT_FOUND,
                f"no corpus file or directory at {job.data.corpus_path!r}",
                details={"corpus_path": job.data.corpus_path},
            )
        if target.is_dir():
            # A folder the service cannot list (no read permission) is refused now, not
            # found empty by the worker later.
            with os.scandir(target):
                pass
    if data_root is not None and isinstance(job.model, PretrainedModel):
        _check_pretrained(job.model, caps, data_root)
    if artifacts_root is not None:
        _check_references(job, artifacts_root)
        if not shared_artifacts:
            _check_owners(job, artifacts_root)
    if memory_budget_mb is not None:
        device, precision = placement(job, cuda_available)
        check_job_memory(
            job,
            memory_budget_mb,
            data_root=data_root,
            artifacts_root=artifacts_root,
            device=device,
            precision=precision,
        )


def resolve_device_precision(
    spec: TrainingSpec, caps: Capabilities, *, cuda_available: bool, bf16_supported: bool
) -> tuple[str, str]:
    """The device and precision ``spec`` asks for on a worker with or without CUDA.

    ``auto`` picks CUDA when there is one, then bf16 where the GPU supports it (else fp16);
    on CPU ``auto`` is fp32. fp16 needs CUDA. Raises CUDA_NOT_AVAILABLE or
    UNSUPPORTED_BACKEND."""
    if spec.device == "cuda" and not cuda_available:
        raise ModelTrainerError(
            _C.CUDA_NOT_AVAILABLE, "the job asks for CUDA; this worker has none"
        )
    device = (
        "cuda" if spec.device == "cuda" or (spec.device == "auto" and cuda_available) else "cpu"
    )
    if device not in caps.devices:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"the backend cannot run on {device}",
            details={"device": device},
        )
    precision = spec.precision
    if precision == "auto":
        precision = "fp32" if device == "cpu" else ("bf16" if bf16_supported else "fp16")
    if precision not in caps.precisions or (precision == "fp16" and device != "cuda"):
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"the backend cannot train in {precision} on {device}",
            details={"precision": precision, "device": device},
        )
    return device, precision


def check_placement(spec: TrainingSpec, caps: Capabilities, *, cuda_available: bool | None) -> None:
    """Refuse a device/precision no worker could use; unknown CUDA (None) is left to it."""
    if cuda_available is None:
        # Either answer may hold on the worker: refuse only what fails in both.
        options = [True, False] if spec.device != "cuda" else [True]
        errors: list[ModelTrainerError] = []
        for cuda in options:
            try:
                resolve_device_precision(spec, caps, cuda_available=cuda, bf16_supported=True)
            except ModelTrainerError as exc:
                errors.append(exc)
        if len(errors) == len(options):
            raise errors[0]
        return
    resolve_device_precision(spec, caps, cuda_available=cuda_available, bf16_supported=True)


def _check_owners(job: SubmitJobV1, artifacts_root: Path) -> None:
    """Each referenced artifact's manifest names the user whose job made it."""
    tok = job.tokenizer
    used = [job.init_from, tok.job_id if isinstance(tok, JobTokenizer) else None]
    for job_id in [j for j in used if j is not None]:
        owner = _owner(confined_folder(artifacts_root, job_id, field="init_from") / MANIFEST)
        if owner != job.user_id:
            raise ModelTrainerError(
                _C.JOB_FORBIDDEN,
                f"job {job_id!r} belongs to another user; its artifact is not shared",
                details={"job_id": job_id},
            )


def _owner(manifest: Path) -> int | None:
    try:
        made: JsonValue = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    spec = made.get("job") if isinstance(made, dict) else None
    user = spec.get("user_id") if isinstance(spec, dict) else None
    return user if isinstance(user, int) else None


def _check_pretrained(spec: PretrainedModel, caps: Capabilities, data_root: Path) -> None:
    folder = inspect_pretrained(data_root, spec.path)
    if folder.parameters > caps.max_parameters:
        raise ModelTrainerError(
            _C.INVALID_MODEL_SIZE,
            f"the model has {folder.parameters} parameters; the bound is {caps.max_parameters}",
            details={"parameters": folder.parameters, "max_parameters": caps.max_parameters},
        )
    folder.check_window(spec.block_size)


def _check_references(job: SubmitJobV1, artifacts_root: Path) -> None:
    init = None
    if job.init_from is not None:  # a job's artifact, or one at a URL (its local copy)
        init = confined_folder(artifacts_root, job.init_from, field="init_from")
    tok = job.tokenizer
    if isinstance(tok, JobTokenizer):
        confined_folder(artifacts_root, tok.job_id, field="tokenizer")
    if init is not None and not (init / MANIFEST).is_file():
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
