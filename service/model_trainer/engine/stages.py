"""Labelling failures with the stage they happened in, and mapping the few foreign
exceptions that have a code (out of memory, artifact writes) to typed errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, Stage

_C = ModelTrainerErrorCode
_OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory")


@contextmanager
def stage(name: Stage, device_type: str = "cpu") -> Iterator[None]:
    """Run a block as stage ``name``.

    A ModelTrainerError still carrying the default stage gets ``name``; torch's and Python's
    out-of-memory errors become CUDA_OOM (on a GPU) or TRAINING_OOM; in the ``save`` stage an
    OSError becomes ARTIFACT_WRITE_FAILED. Anything else propagates unchanged.
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
        if any(text in str(exc).lower() for text in _OOM_TEXT):
            raise _oom(name, device_type, exc) from exc
        raise
    except OSError as exc:
        if name != "save":
            raise
        raise ModelTrainerError(
            _C.ARTIFACT_WRITE_FAILED, f"cannot write the artifact: {exc}", stage=name
        ) from exc


def _oom(name: Stage, device_type: str, exc: BaseException) -> ModelTrainerError:
    code = _C.CUDA_OOM if device_type == "cuda" else _C.TRAINING_OOM
    return ModelTrainerError(code, f"out of memory: {str(exc)[:300]}", stage=name)
