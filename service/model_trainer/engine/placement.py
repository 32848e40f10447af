"""Where, in what precision and how fast a job runs, decided once before training.

:func:`plan` is a pure function of the job's training spec, the backend's capabilities and a
:class:`DeviceInfo` (what the worker's hardware offers), so every choice can be tested on a
machine without a GPU by describing one:

* device and precision: ``auto`` picks CUDA when this worker has it, and then bf16 where the
  GPU supports it (else fp16 with a GradScaler, which the trainer adds); on CPU ``auto`` is
  fp32. fp16 needs CUDA;
* ``torch.compile``: ``training.compile`` on/off, or ``auto``: on for CUDA where the backend
  supports it, off on CPU (compiling takes longer than a short CPU job gains);
* fused AdamW: always for AdamW (torch has fused kernels for CUDA and CPU alike);
* TF32 matmuls for the fp32 parts: on for CUDA GPUs of compute capability 8.0 and later;
* pinned host memory with non-blocking copies for batches: on for CUDA;
* the device's peak FLOPs for the model-FLOPs utilisation figure (``mfu``): a table by
  device name (:func:`peak_flops`), None when unknown (CPU, unlisted GPUs).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, TrainingSpec

from model_trainer.core.admission import resolve_device_precision
from model_trainer.core.capabilities import Capabilities

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TF32_CAPABILITY = (8, 0)  # Ampere

# Dense (no sparsity) bf16/fp16 tensor-core peaks, FLOP/s, per GPU, from the vendors' data
# sheets. First match wins: specific names before the families they belong to.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH200 NVL\b", 836e12),
    (r"\bG?H200\b", 989e12),  # SXM, and the GH200 superchip
    (r"\bH100 NVL\b", 835e12),
    (r"\bH100 PCIe\b", 756e12),
    (r"\bH100\b", 989e12),  # SXM ("H100 80GB HBM3")
    (r"\bH800\b", 989e12),
    (r"\bA100\b", 312e12),
    (r"\bA800\b", 312e12),
    (r"\bL40S\b", 362e12),
    (r"\bL40\b", 181e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
    (r"\bV100\b", 125e12),  # fp16 only
    (r"\bT4\b", 65e12),  # fp16 only
)


def peak_flops(device_name: str | None) -> float | None:
    """The dense bf16/fp16 peak of the GPU called ``device_name``; None when not listed."""
    if not device_name:
        return None
    for pattern, peak in PEAK_FLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


@dataclass(frozen=True)
class DeviceInfo:
    """What this worker's hardware offers: the input of :func:`plan`."""

    cuda_available: bool
    bf16_supported: bool = False
    name: str | None = None  # of CUDA device 0
    capability: tuple[int, int] | None = None  # CUDA compute capability

    @classmethod
    def probe(cls, cuda_available: bool | None = None) -> DeviceInfo:
        """This process's device; ``cuda_available=False`` describes it without CUDA."""
        real = torch.cuda.is_available()
        if not real or cuda_available is False:
            return cls(cuda_available=bool(cuda_available))
        return cls(
            cuda_available=True,
            bf16_supported=torch.cuda.is_bf16_supported(),
            name=torch.cuda.get_device_name(0),
            capability=torch.cuda.get_device_capability(0),
        )


@dataclass(frozen=True)
class Plan:
    """Every choice :func:`plan` makes, as plain data."""

    device: str  # cpu | cuda
    precision: str  # fp32 | fp16 | bf16
    compile: bool
    fused_adamw: bool
    tf32: bool
    pin_memory: bool
    peak_flops: float | None


def wants_compile(spec: TrainingSpec, caps: Capabilities, device: str) -> bool:
    """Whether to compile: as asked, or (auto) on CUDA where the backend can.
    UNSUPPORTED_BACKEND when asked for a backend that cannot be compiled."""
    asked = spec.compile
    if asked is True or asked == "on":
        if not caps.can_compile:
            raise ModelTrainerError(
                ModelTrainerErrorCode.UNSUPPORTED_BACKEND,
                "the backend cannot be compiled (training.compile)",
            )
        return True
    if asked is False or asked == "off":
        return False
    return device == "cuda" and caps.can_compile


def plan(spec: TrainingSpec, caps: Capabilities, info: DeviceInfo) -> Plan:
    """The device, precision and speed settings for ``spec`` on hardware ``info``. Raises
    CUDA_NOT_AVAILABLE or UNSUPPORTED_BACKEND (see
    :func:`model_trainer.core.admission.resolve_device_precision`)."""
    device, precision = resolve_device_precision(
        spec, caps, cuda_available=info.cuda_available, bf16_supported=info.bf16_supported
    )
    cuda = device == "cuda"
    return Plan(
        device=device,
        precision=precision,
        compile=wants_compile(spec, caps, device),
        fused_adamw=spec.optimizer == "adamw",
        tf32=cuda and info.capability is not None and info.capability >= TF32_CAPABILITY,
        pin_memory=cuda,
        peak_flops=peak_flops(info.name) if cuda else None,
    )


@dataclass(frozen=True)
class Placement:
    """A :class:`Plan` with its torch device."""

    device: torch.device
    precision: str  # fp32 | fp16 | bf16
    compile: bool = False
    fused_adamw: bool = False
    tf32: bool = False
    pin_memory: bool = False
    peak_flops: float | None = None

    @property
    def uses_scaler(self) -> bool:
        return self.precision == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast for fp16/bf16; a no-op context for fp32."""
        dtype = _DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def apply_matmul_precision(self) -> None:
        """TF32 for fp32 matrix multiplications when planned; full fp32 otherwise (the
        setting is per process: a worker's next job sets its own)."""
        torch.set_float32_matmul_precision("high" if self.tf32 else "highest")

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU batch on the device: through pinned memory, without blocking, on CUDA."""
        if self.device.type == "cpu":
            return tensor
        if self.pin_memory:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


def resolve_placement(
    spec: TrainingSpec, caps: Capabilities, *, cuda_available: bool | None = None
) -> Placement:
    """The placement for ``spec`` on this worker (``cuda_available=False`` plans as if it had
    no CUDA; True without a GPU plans for a generic one)."""
    info = DeviceInfo.probe(cuda_available)
    if cuda_available and not info.cuda_available:
        info = DeviceInfo(cuda_available=True)
    p = plan(spec, caps, info)
    return Placement(
        device=torch.device(p.device),
        precision=p.precision,
        compile=p.compile,
        fused_adamw=p.fused_adamw,
        tf32=p.tf32,
        pin_memory=p.pin_memory,
        peak_flops=p.peak_flops,
    )
