"""``model-trainer trainjob``: the Kubeflow Trainer ``TrainJob`` of a job, as YAML."""

from __future__ import annotations

import yaml  # installed with transformers (huggingface-hub requires it)
from model_trainer_contracts import SubmitJobV1

from model_trainer.core.capabilities import CAPABILITIES
from model_trainer.core.distributed import check_resources
from model_trainer.core.trainjob import TrainJobOptions, trainjob_manifest


def trainjob_yaml(job: SubmitJobV1, options: TrainJobOptions) -> str:
    """The manifest of :func:`~model_trainer.core.trainjob.trainjob_manifest`, for a job the
    backend can train over ``nodes x processes`` ranks (else its UNSUPPORTED_BACKEND)."""
    caps = CAPABILITIES[job.backend]  # the contracts' backends are the table's keys
    res = job.resources
    # The acceptance check of the ranks, on the whole world: the pods' own check sees the
    # processes of one node only.
    whole = res.model_copy(update={"processes": res.world, "nodes": 1})
    check_resources(job.model_copy(update={"resources": whole}), caps, cuda_available=None)
    return yaml.safe_dump(trainjob_manifest(job, options), sort_keys=False, width=100)
