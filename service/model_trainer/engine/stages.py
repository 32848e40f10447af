"""Labelling failures with the stage they happened in, and mapping the few foreign
exceptions that have a code (out of memory, a full disk, artifact writes) to typed errors."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, Stage
from pydantic import JsonValue

_C = ModelTrainerErrorCode
# Host memory: torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory"), C++'s
# std::bad_alloc as torch re-raises it. Then the messages of either.
# oneDNN says "could not create a primitive" when its scratch allocation fails under the
# worker's RLIMIT_DATA (seen on AMD EPYC, where the limit is reached inside a kernel).
_HOST_OOM_TEXT = ("can't allocate memory", "bad_alloc", "could not create a primitive")
_OOM_TEXT = (*_HOST_OOM_TEXT, "out of memory", "not enough memory")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out: MemoryError, torch's OutOfMemoryError, a
    RuntimeError with an allocator's message, an OSError with ENOMEM (a failed mmap)."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOMEM
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` comes of a write into a full disk or quota (ENOSPC, EDQUOT), itself or
    along its chain: ``torch.save`` into a full disk raises a RuntimeError ("unexpected pos")
    whose context is the OSError."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def disk_full(name: Stage, exc: BaseException) -> ModelTrainerError:
    """DISK_FULL: retryable, and not the job's fault, so the service hands the job back with
    its checkpoints instead of ending it."""
    where = next(
        (
            str(c.filename)
            for c in (exc, exc.__cause__, exc.__context__)
            if isinstance(c, OSError) and c.filename
        ),
        None,
    )
    details: dict[str, JsonValue] = {} if where is None else {"path": where}
    return ModelTrainerError(
        _C.DISK_FULL, f"the disk is full: {str(exc)[:300]}", stage=name, details=details
    )


@contextmanager
def stage(name: Stage, device_type: str = "cpu") -> Iterator[None]:
    """Run a block as stage ``name``.

    A ModelTrainerError still carrying the default stage gets ``name``; torch's and Python's
    out-of-memory errors (:func:`is_oom`, e.g. an allocation past the worker's memory limit)
    become CUDA_OOM (on a GPU) or TRAINING_OOM; a write into a full disk (:func:`is_disk_full`)
    becomes DISK_FULL; in the ``save`` stage another OSError becomes ARTIFACT_WRITE_FAILED.
    Anything else propagates unchanged.
    """
    try:
        yield
    except ModelTrainerError as exc:
        if exc.stage == "validate":
            exc.stage = name
        raise
    except torch.OutOfMemoryError as exc:
        raise _oom(name, device_type, exc) from exc
    except MemoryError as exc:
        raise _oom(name, "cpu", exc) from exc
    except RuntimeError as exc:
        if is_disk_full(exc):
            raise disk_full(name, exc) from exc
        text = str(exc).lower()
        if any(t in text for t in _HOST_OOM_TEXT):
            raise _oom(name, "cpu", exc) from exc
        if any(t in text for t in _OOM_TEXT):
            raise _oom(name, device_type, exc) from exc
        raise
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            raise _oom(name, "cpu", exc) from exc
        if is_disk_full(exc):
            raise disk_full(name, exc) from exc
        if name != "save":
            raise
        raise ModelTrainerError(
            _C.ARTIFACT_WRITE_FAILED, f"cannot write the artifact: {exc}", stage=name
        ) from exc


def _oom(name: Stage, device_type: str, exc: BaseException) -> ModelTrainerError:
    code = _C.CUDA_OOM if device_type == "cuda" else _C.TRAINING_OOM
    return ModelTrainerError(code, f"out of memory: {str(exc)[:300]}", stage=name)
