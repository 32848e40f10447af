"""Where and in what precision a job runs, resolved once before training.

``auto`` picks CUDA when this worker has it, and then bf16 where the GPU supports it (else
fp16); on CPU ``auto`` is fp32. fp16 needs CUDA (and a GradScaler, which the trainer adds).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from model_trainer_contracts import TrainingSpec

from model_trainer.core.admission import resolve_device_precision
from model_trainer.core.capabilities import Capabilities

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
    """The device and precision for ``spec`` on this worker (see
    :func:`model_trainer.core.admission.resolve_device_precision`)."""
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    bf16 = has_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    device, precision = resolve_device_precision(
        spec, caps, cuda_available=has_cuda, bf16_supported=bf16
    )
    return Placement(torch.device(device), precision)
