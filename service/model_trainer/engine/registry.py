"""Backends by name: an explicit table over the contracts' closed ``BackendName`` set."""

from __future__ import annotations

from collections.abc import Callable

from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue

from model_trainer.engine.backend import Backend
from model_trainer.engine.backends.char_lstm import CharLstmBackend
from model_trainer.engine.backends.gpt2 import Gpt2Backend
from model_trainer.engine.backends.llama import LlamaBackend
from model_trainer.engine.backends.pretrained import PretrainedBackend

BACKENDS: dict[str, Callable[[], Backend]] = {
    CharLstmBackend.name: CharLstmBackend,
    Gpt2Backend.name: Gpt2Backend,
    LlamaBackend.name: LlamaBackend,
    PretrainedBackend.name: PretrainedBackend,
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
    return factory()
