"""The backend registry: what each backend can do, and the factory that builds one by name.

A backend supplies only what differs between model families (build the network, forward and
loss, save and load weights); :class:`~model_trainer.engine.trainer.BaseTrainer` owns the rest.
Each backend declares its :class:`Capabilities` so a job asking for something it cannot do is
refused before any work (see :mod:`model_trainer.engine.validate`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from model_trainer_contracts import (
    CharLstmModel,
    Gpt2Model,
    ModelTrainerError,
    ModelTrainerErrorCode,
)
from pydantic import JsonValue
from torch import Tensor, nn

ModelSpec = CharLstmModel | Gpt2Model


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports. ``max_parameters`` bounds the non-embedding parameter count."""

    tokenizers: frozenset[str]
    devices: frozenset[str]
    precisions: frozenset[str]
    max_parameters: int
    max_context: int
    can_resume: bool
    can_finetune: bool


class Backend(ABC):
    """One model family. Stateless: every method takes the model it works on."""

    name: ClassVar[str]
    family: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def context_length(self, spec: ModelSpec) -> int:
        """Tokens per training window."""

    @abstractmethod
    def core_parameters(self, spec: ModelSpec) -> int:
        """Parameters that do not scale with the vocabulary; computed without building."""

    @abstractmethod
    def build(self, spec: ModelSpec, vocab_size: int) -> nn.Module:
        """A freshly initialised network whose ``forward(x)`` returns logits ``(B, T, V)``."""

    @abstractmethod
    def save_weights(self, model: nn.Module, out_dir: Path) -> None:
        """Write the weights (safetensors) and any config a reader needs into ``out_dir``."""

    @abstractmethod
    def load_weights(self, model: nn.Module, artifact_dir: Path) -> None:
        """Load weights written by :meth:`save_weights` into ``model``.

        Raises MODEL_LOAD_FAILED when the files cannot be read and MODEL_INCOMPATIBLE when
        their names or shapes do not match ``model``."""

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Mean next-token cross-entropy of ``model`` on inputs ``x`` and targets ``y``."""
        logits: Tensor = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """Next-token logits ``(B, T, V)``; ``x`` is cropped to the context by the caller."""
        out: Tensor = model(x)
        return out


def load_safetensors_into(model: nn.Module, path: Path, may_lack: frozenset[str]) -> None:
    """Strictly load a safetensors file into ``model``, tolerating missing ``may_lack`` keys
    (weights tied to another one, which the file stores once)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelTrainerError(
            ModelTrainerErrorCode.MODEL_NOT_FOUND, f"no weights file {path.name} in {path.parent}"
        )
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelTrainerError(
            ModelTrainerErrorCode.MODEL_LOAD_FAILED, f"cannot read {path}: {exc}"
        ) from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - may_lack)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ModelTrainerError(
            ModelTrainerErrorCode.MODEL_INCOMPATIBLE,
            "artifact weights do not fit the requested model",
            details={
                "missing": list[JsonValue](missing[:20]),
                "unexpected": list[JsonValue](unexpected[:20]),
                "shape": list[JsonValue](wrong[:20]),
            },
        )
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


_REGISTRY: dict[str, Callable[[], Backend]] = {}


def register(name: str, factory: Callable[[], Backend]) -> None:
    """Make a backend available under ``name`` (the job's ``backend`` field)."""
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create_backend(name: str) -> Backend:
    """The backend registered as ``name``, or UNSUPPORTED_BACKEND."""
    _load_builtin()
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ModelTrainerError(
            ModelTrainerErrorCode.UNSUPPORTED_BACKEND,
            f"no backend {name!r}; this worker has {sorted(_REGISTRY)}",
            details={"backend": name, "available": list[JsonValue](sorted(_REGISTRY))},
        )
    return factory()


def _load_builtin() -> None:
    # Imported late: the backends import this module to register themselves.
    import model_trainer.engine.backends  # noqa: F401
