"""Backends by name: an explicit table over the contracts' closed ``BackendName`` set.

Each entry imports its backend when first called: transformers' model classes take seconds of
CPU to import, which a worker that only trains ``char_lstm`` never needs to pay. A worker
imports the backends named in ``MODEL_TRAINER_WORKER_PRELOAD`` (all by default) before it says
it is ready, so a job does not wait for an import (:func:`preload`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue

from model_trainer.engine.backend import Backend


def _char_lstm() -> Backend:
    from model_trainer.engine.backends.char_lstm import CharLstmBackend

    return CharLstmBackend()


def _gpt2() -> Backend:
    from model_trainer.engine.backends.gpt2 import Gpt2Backend

    return Gpt2Backend()


def _llama() -> Backend:
    from model_trainer.engine.backends.llama import LlamaBackend

    return LlamaBackend()


def _pretrained() -> Backend:
    from model_trainer.engine.backends.pretrained import PretrainedBackend

    return PretrainedBackend()


BACKENDS: dict[str, Callable[[], Backend]] = {
    "char_lstm": _char_lstm,
    "gpt2": _gpt2,
    "llama": _llama,
    "pretrained": _pretrained,
}


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def create_backend(name: str) -> Backend:
    """The backend called ``name``, or UNSUPPORTED_BACKEND."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise ModelTrainerError(
            ModelTrainerErrorCode.UNSUPPORTED_BACKEND,
            f"no backend {name!r}; this worker has {sorted(BACKENDS)}",
            details={"backend": name, "available": list[JsonValue](sorted(BACKENDS))},
        )
    backend = factory()
    if backend.name != name:  # the table and the classes must agree
        raise RuntimeError(f"backend table entry {name!r} made {backend.name!r}")
    return backend


def preload(names: Iterable[str]) -> None:
    """Import the named backends now (unknown names are ignored: the job is refused later)."""
    for name in names:
        if name in BACKENDS:
            create_backend(name)
