"""Acceptance checks of a job of several processes (``resources``), torch-free.

The worker-slot check (more processes than the instance has workers) is in
:mod:`model_trainer.shell.budgets`, which knows the settings; the memory estimate per process in
:mod:`.memory`.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1

from .capabilities import Capabilities

_C = ModelTrainerErrorCode


@dataclass(frozen=True)
class Rank:
    """This process's place in a job of ``world`` processes meeting at ``init_method``."""

    rank: int
    world: int
    strategy: str  # ddp | fsdp
    init_method: str  # file://<folder>/store (or tcp://host:port)

    @property
    def leader(self) -> bool:
        return self.rank == 0


def check_resources(job: SubmitJobV1, caps: Capabilities, *, cuda_available: bool | None) -> None:
    """UNSUPPORTED_BACKEND for a strategy the backend lacks (none at all: one process only),
    and for several processes on CUDA, which this version does not run (gloo on CPU only)."""
    res = job.resources
    if res.processes == 1:
        return
    if not caps.strategies or (res.strategy != "auto" and res.strategy not in caps.strategies):
        have = sorted(caps.strategies)
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"backend {job.backend!r} cannot train on {res.processes} processes with "
            f"{res.strategy!r} (it supports {have or 'one process only'})",
            details={"backend": job.backend, "strategy": res.strategy, "supported": list(have)},
        )
    if job.training.device == "cuda" or (job.training.device == "auto" and cuda_available):
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            "a job of several processes trains on CPU (gloo) only in this version: "
            'set training.device to "cpu"',
            details={"processes": res.processes, "device": job.training.device},
        )


def strategy_of(job: SubmitJobV1, budget_mb: int | None) -> str:
    """The strategy the job's ranks use: :func:`~.memory.choose_strategy` with the estimate
    the spec allows (as at acceptance), ``ddp`` for ``auto`` without a budget."""
    from .memory import check_job_memory, choose_strategy

    if budget_mb is None:
        return "ddp" if job.resources.strategy == "auto" else job.resources.strategy

    def fits(strategy: str) -> bool:
        forced = job.model_copy(
            update={"resources": job.resources.model_copy(update={"strategy": strategy})}
        )
        try:
            check_job_memory(
                forced,
                budget_mb,
                data_root=None,
                artifacts_root=None,
                device="cpu",
                precision="fp32",
            )
        except ModelTrainerError:
            return False
        return True

    return choose_strategy(job, fits)
