"""Labelling failures with the stage they happened in, and mapping the few foreign
exceptions that have a code (out of memory, artifact writes) to typed errors."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, Stage

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


@contextmanager
def stage(name: Stage, device_type: str = "cpu") -> Iterator[None]:
    """Run a block as stage ``name``.

    A ModelTrainerError still carrying the default stage gets ``name``; torch's and Python's
    out-of-memory errors (:func:`is_oom`, e.g. an allocation past the worker's memory limit)
    become CUDA_OOM (on a GPU) or TRAINING_OOM; in the ``save`` stage another OSError becomes
    ARTIFACT_WRITE_FAILED. Anything else propagates unchanged.
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
        text = str(exc).lower()
        if any(t in text for t in _HOST_OOM_TEXT):
            raise _oom(name, "cpu", exc) from exc
        if any(t in text for t in _OOM_TEXT):
            raise _oom(name, device_type, exc) from exc
        raise
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            raise _oom(name, "cpu", exc) from exc
        if name != "save":
            raise
        raise ModelTrainerError(
            _C.ARTIFACT_WRITE_FAILED, f"cannot write the artifact: {exc}", stage=name
        ) from exc


def _oom(name: Stage, device_type: str, exc: BaseException) -> ModelTrainerError:
    code = _C.CUDA_OOM if device_type == "cuda" else _C.TRAINING_OOM
    return ModelTrainerError(code, f"out of memory: {str(exc)[:300]}", stage=name)
