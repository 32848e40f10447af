"""Where and in what precision a job runs, resolved once before training.

``auto`` picks CUDA when this worker has it, and then bf16 where the GPU supports it (else
fp16); on CPU ``auto`` is fp32. fp16 needs CUDA (and a GradScaler, which the trainer adds).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, TrainingSpec

from model_trainer.engine.registry import Capabilities

_C = ModelTrainerErrorCode
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # fp32 | fp16 | bf16

    @property
    def uses_scaler(self) -> bool:
        return self.precision == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast for fp16/bf16; a no-op context for fp32."""
        dtype = _DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def resolve_placement(
    spec: TrainingSpec, caps: Capabilities, *, cuda_available: bool | None = None
) -> Placement:
    """The device and precision for ``spec``; CUDA_NOT_AVAILABLE or UNSUPPORTED_BACKEND."""
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if spec.device == "cuda" and not has_cuda:
        raise ModelTrainerError(
            _C.CUDA_NOT_AVAILABLE, "the job asks for CUDA; this worker has none"
        )
    device = "cuda" if spec.device == "cuda" or (spec.device == "auto" and has_cuda) else "cpu"
    if device not in caps.devices:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"the backend cannot run on {device}",
            details={"device": device},
        )
    precision = spec.precision
    if precision == "auto":
        bf16_ok = device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "fp32" if device == "cpu" else ("bf16" if bf16_ok else "fp16")
    if precision not in caps.precisions or (precision == "fp16" and device != "cuda"):
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"the backend cannot train in {precision} on {device}",
            details={"precision": precision, "device": device},
        )
    return Placement(torch.device(device), precision)
