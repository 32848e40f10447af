"""Device, precision and speed choices: a pure function of the spec, the backend's
capabilities and a description of the hardware, so a faked CUDA table tests them on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from model_trainer.core.capabilities import CAPABILITIES, flops_per_token
from model_trainer.engine import run_job
from model_trainer.engine.backends.gpt2 import Gpt2Net
from model_trainer.engine.backends.hf import hf_flops_per_token
from model_trainer.engine.placement import DeviceInfo, Plan, peak_flops, plan
from model_trainer_contracts import (
    Gpt2Model,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    TrainingSpec,
)

from tests.engine.engine_helpers import Env, Event

CPU = DeviceInfo(cuda_available=False)
H100 = DeviceInfo(True, bf16_supported=True, name="NVIDIA H100 80GB HBM3", capability=(9, 0))
V100 = DeviceInfo(True, bf16_supported=False, name="Tesla V100-SXM2-16GB", capability=(7, 0))
UNKNOWN = DeviceInfo(True, bf16_supported=True, name="NVIDIA Future 9000", capability=(12, 0))


def _plan(info: DeviceInfo, backend: str = "gpt2", **training: object) -> Plan:
    return plan(TrainingSpec.model_validate(training), CAPABILITIES[backend], info)


def test_cpu_plan() -> None:
    assert _plan(CPU) == Plan(
        device="cpu",
        precision="fp32",
        compile=False,
        fused_adamw=True,
        tf32=False,
        pin_memory=False,
        peak_flops=None,
    )
    assert _plan(CPU, compile="on").compile
    assert _plan(CPU, compile=True).compile
    assert not _plan(CPU, optimizer="sgd").fused_adamw
    assert _plan(CPU, precision="bf16").precision == "bf16"  # CPU autocast, when asked


def test_hopper_plan() -> None:
    assert _plan(H100) == Plan(
        device="cuda",
        precision="bf16",
        compile=True,
        fused_adamw=True,
        tf32=True,
        pin_memory=True,
        peak_flops=989e12,
    )
    for backend in ("gpt2", "llama", "pretrained"):
        assert _plan(H100, backend).compile
    assert not _plan(H100, "char_lstm").compile  # auto: only where the backend can
    assert not _plan(H100, compile="off").compile
    assert not _plan(H100, compile=False).compile
    assert _plan(H100, device="cpu").device == "cpu"
    assert not _plan(H100, device="cpu").compile


def test_older_and_unknown_gpus() -> None:
    volta = _plan(V100)
    assert (volta.precision, volta.tf32, volta.peak_flops) == ("fp16", False, 125e12)
    unknown = _plan(UNKNOWN)
    assert (unknown.precision, unknown.tf32, unknown.peak_flops) == ("bf16", True, None)


def test_refusals() -> None:
    with pytest.raises(ModelTrainerError) as err:
        _plan(H100, "char_lstm", compile="on")
    assert err.value.code == ModelTrainerErrorCode.UNSUPPORTED_BACKEND
    with pytest.raises(ModelTrainerError) as err:
        _plan(CPU, device="cuda")
    assert err.value.code == ModelTrainerErrorCode.CUDA_NOT_AVAILABLE
    with pytest.raises(ModelTrainerError) as err:
        _plan(CPU, precision="fp16")
    assert err.value.code == ModelTrainerErrorCode.UNSUPPORTED_BACKEND


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 836e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("Tesla T4", 65e12),
        ("NVIDIA GeForce RTX 4090", None),
        (None, None),
    ],
)
def test_peak_flops_table(name: str | None, peak: float | None) -> None:
    assert peak_flops(name) == peak


def test_flops_per_token_follows_nanogpt() -> None:
    # GPT-2 124M at T=1024: nanoGPT counts N without the position table (85M + 38.6M wte).
    # Built on the meta device: the count needs only the shapes, and initialising 124M
    # weights cost `make test-fast` 2.5 s of CPU.
    with torch.device("meta"):
        net = Gpt2Net(Gpt2Model(n_layer=12, n_head=12, n_embd=768, block_size=1024), 50257)
    n = sum(p.numel() for p in net.parameters()) - 1024 * 768
    assert hf_flops_per_token(net.hf, 1024) == flops_per_token(n, 12, 12, 64, 1024)
    assert flops_per_token(n, 12, 12, 64, 1024) == 6 * n + 12 * 12 * 12 * 64 * 1024


def test_cpu_run_reports_no_mfu_and_records_its_choices(env: Env) -> None:
    events: list[Event] = []
    done = run_job(env.ctx(env.job("llama"), events))
    progress = [e for e in events if isinstance(e, ProgressEventV1)]
    assert progress
    assert all(e.mfu is None for e in progress)
    manifest = json.loads((env.artifacts_root / "job-1" / "manifest.json").read_text())
    resolved = manifest["resolved"]
    assert (resolved["device"], resolved["precision"], resolved["compile"]) == (
        "cpu",
        "fp32",
        False,
    )
    assert resolved["fused_adamw"] is True
    assert resolved["tf32"] is False
    assert resolved["flops_per_token"] > 0
    assert done.steps == 8
