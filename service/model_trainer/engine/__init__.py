"""The training engine: BaseTrainer, the backends, data, tokenizers, checkpoints.

Entry points for the runtime and the CLI:

* :func:`run_job` trains one job attempt described by a :class:`RunContext`;
* :func:`validate_job` refuses a job this worker cannot run, before any work;
* :func:`sample` generates text from a finished artifact.
"""

from __future__ import annotations

from model_trainer_contracts import CompletedEventV1

from model_trainer.core.capabilities import Capabilities
from model_trainer.core.layout import DOWNLOADS
from model_trainer.core.remote_folders import use_downloads
from model_trainer.core.stop import StopReason
from model_trainer.engine.backend import Backend
from model_trainer.engine.context import Preempted, RunContext
from model_trainer.engine.registry import create_backend
from model_trainer.engine.sampling import sample
from model_trainer.engine.trainer import BaseTrainer
from model_trainer.engine.validate import validate_job


def run_job(ctx: RunContext) -> CompletedEventV1:
    """Train ``ctx.job`` (resuming from its checkpoint when there is one).

    Emits one ConfigEventV1, then ProgressEventV1s, through ``ctx.emit`` (and appends them to
    ``<job_dir>/metrics.jsonl``); returns the CompletedEventV1 without emitting it. Raises
    ModelTrainerError (with its stage) on failure, TRAINING_CANCELLED / TRAINING_TIMEOUT after
    checkpointing when asked to stop, and :class:`Preempted` after checkpointing on shutdown.
    """
    # A model folder or init_from artifact at a URL is loaded from a full local copy.
    use_downloads(ctx.artifacts_root / DOWNLOADS, full=True)
    validate_job(
        ctx.job,
        data_root=ctx.data_root,
        artifacts_root=ctx.artifacts_root,
        memory_budget_mb=ctx.memory_budget_mb,
    )
    return BaseTrainer(ctx, create_backend(ctx.job.backend)).run()


__all__ = [
    "Backend",
    "BaseTrainer",
    "Capabilities",
    "Preempted",
    "RunContext",
    "StopReason",
    "create_backend",
    "run_job",
    "sample",
    "validate_job",
]
