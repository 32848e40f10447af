"""What a backend is: the part of training that differs between model families.

A backend supplies only the network, its loss, and how its weights are saved and loaded;
:class:`~model_trainer.engine.trainer.BaseTrainer` owns the rest. What a backend can do, and
its shape arithmetic, live torch-free in :mod:`model_trainer.core.capabilities`, so the
service refuses a job before any worker sees it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from model_trainer_contracts import AdapterSpec, ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue
from torch import Tensor, nn

from model_trainer.core.capabilities import (
    CAPABILITIES,
    Capabilities,
    ModelSpec,
    core_parameters,
    flops_per_token,
)
from model_trainer.core.capabilities import context_length as _context_length
from model_trainer.engine.tokenizer import TextTokenizer


class Backend(ABC):
    """One model family. Stateless: every method takes the model it works on."""

    name: ClassVar[str]
    family: ClassVar[str]

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES[self.name]

    def context_length(self, spec: ModelSpec) -> int:
        """Tokens per training window."""
        return _context_length(spec)

    def core_parameters(self, spec: ModelSpec) -> int:
        """Parameters that do not scale with the vocabulary; computed without building."""
        return core_parameters(spec)

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

    def create(self, spec: ModelSpec, vocab_size: int, data_root: Path) -> nn.Module:
        """The network a job starts from: :meth:`build` (fresh weights) unless the backend
        loads one from files under ``data_root``."""
        return self.build(spec, vocab_size)

    def supplied_tokenizer(self, spec: ModelSpec, data_root: Path) -> TextTokenizer | None:
        """The tokenizer that comes with the model (tokenizer kind ``model``), if any."""
        return None

    def load_artifact(self, spec: ModelSpec, vocab_size: int, artifact_dir: Path) -> nn.Module:
        """The network of a finished artifact, to generate from."""
        model = self.build(spec, vocab_size)
        self.load_weights(model, artifact_dir)
        return model

    def compile(self, model: nn.Module) -> None:
        """``torch.compile`` in place: parameter names (checkpoints, artifacts) stay as they
        are. Shapes are fixed (every batch is full), so the graph is compiled static."""
        model.compile(dynamic=False)

    def flops_per_token(self, model: nn.Module, context: int) -> float:
        """Training FLOPs per token for the ``mfu`` figure: 6N by default (no attention)."""
        return flops_per_token(sum(p.numel() for p in model.parameters()), 0, 0, 0, context)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Mean next-token cross-entropy of ``model`` on inputs ``x`` and targets ``y``,
        computed here from the logits: ``y`` is already shifted, so no label copies."""
        logits: Tensor = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    def packed_loss(self, model: nn.Module, x: Tensor, y: Tensor, positions: Tensor) -> Tensor:
        """Mean cross-entropy over the targets of packed rows that are not ``IGNORE`` (-100),
        with ``positions`` restarting at each example (:mod:`.packing`)."""
        raise ModelTrainerError(
            ModelTrainerErrorCode.UNSUPPORTED_BACKEND,
            f"backend {self.name!r} cannot train on chat or instruction examples",
        )

    def attach_adapter(self, model: nn.Module, adapter: AdapterSpec) -> nn.Module:
        """``model`` with a trainable adapter and every other weight frozen."""
        raise ModelTrainerError(
            ModelTrainerErrorCode.UNSUPPORTED_BACKEND, f"backend {self.name!r} takes no adapter"
        )

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
