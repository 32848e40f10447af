"""A job of several nodes (``resources.nodes``) as a Kubeflow Trainer ``TrainJob``: pure, no I/O.

One instance of the service runs a job on its own worker slots only, so it refuses
``nodes > 1`` at acceptance (:func:`check_nodes`); :func:`trainjob_manifest` writes the
``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, checked against the Trainer CRD pinned under
``deploy/kubeflow/``) that runs such a job on a cluster with Kubeflow Trainer's
``torch-distributed`` runtime: ``torchrun`` on each node, fed by the runtime's ``PET_*``
variables, starting ``model-trainer run --ranks-from-env`` once per process.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1
from pydantic import JsonValue

from .distributed import Rank, strategy_of

API_VERSION = "trainer.kubeflow.org/v1alpha1"
RUNTIME = "torch-distributed"
TRAINJOB_COMMAND = "model-trainer trainjob JOB.json"
JOB_ENV = "MODEL_TRAINER_JOB_JSON"
JOB_ID_LABEL = "model-trainer.io/job-id"
JOB_ID_ANNOTATION = "model-trainer.io/job-id"
# The runtime sets these for torchrun; the Trainer's webhook refuses a TrainJob that sets them.
RESERVED_ENV = (
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
)
# A TrainJob's name is an RFC 1035 label of at most 63 characters (a rule of its CRD).
_NAME_MAX = 63
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def check_nodes(job: SubmitJobV1) -> None:
    """RESOURCE_LIMIT_EXCEEDED for a job over more than one node: one instance holds one node."""
    nodes = job.resources.nodes
    if nodes > 1:
        raise ModelTrainerError(
            ModelTrainerErrorCode.RESOURCE_LIMIT_EXCEEDED,
            f"a job of {nodes} nodes cannot run on one service instance: run it on a cluster "
            f"as a Kubeflow Trainer TrainJob ({TRAINJOB_COMMAND})",
            details={"field": "resources.nodes", "value": nodes, "limit": 1, "run_as": "TrainJob"},
        )


@dataclass(frozen=True)
class TrainJobOptions:
    """What the cluster provides, named: the image, the runtime, the Secrets and the stores."""

    image: str
    runtime: str = RUNTIME
    namespace: str | None = None
    # Per node; None: one CPU per process and 4 GiB per process.
    cpu: str | None = None
    memory: str | None = None
    data_root: str = "/data"
    artifacts_root: str = "/artifacts"
    # A Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (None: none mounted, e.g.
    # the pods' own role); the store's endpoint, when not AWS, as AWS_ENDPOINT_URL.
    s3_secret: str | None = None
    s3_endpoint: str | None = None
    # s3://bucket/prefix: the checkpoints and the artifact (rank 0's) outlive the pods there.
    artifacts_url: str | None = None


def trainjob_name(job_id: str) -> str:
    """An RFC 1035 label (at most 63 characters) for ``job_id``: lowercased, other characters
    as ``-``, and a digest of the id when that changed or cut it, so two ids never share one."""
    base = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    if base == job_id and len(base) <= _NAME_MAX and base[:1].isalpha():
        return base
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:10]
    head = base[: _NAME_MAX - len(digest) - 4].strip("-")
    return f"mt-{head}-{digest}" if head else f"mt-{digest}"


def trainjob_manifest(job: SubmitJobV1, options: TrainJobOptions) -> dict[str, JsonValue]:
    """The ``TrainJob`` that runs ``job`` on ``resources.nodes`` nodes of ``resources.processes``
    processes each. The job's JSON travels in an environment variable, so the pods need no
    volume for it; credentials only as Secret references."""
    res = job.resources
    name = trainjob_name(job.job_id)
    labels: dict[str, JsonValue] = {"app.kubernetes.io/name": "model-trainer"}
    if len(job.job_id) <= _NAME_MAX and _LABEL_VALUE.match(job.job_id):
        labels[JOB_ID_LABEL] = job.job_id
    metadata: dict[str, JsonValue] = {
        "name": name,
        "labels": labels,
        "annotations": {JOB_ID_ANNOTATION: job.job_id},
    }
    if options.namespace is not None:
        metadata["namespace"] = options.namespace
    env: list[JsonValue] = [
        {"name": JOB_ENV, "value": job.model_dump_json()},
    ]
    if options.s3_endpoint is not None:
        env.append({"name": "AWS_ENDPOINT_URL", "value": options.s3_endpoint})
    if options.s3_secret is not None:
        env.extend(
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": options.s3_secret, "key": key}},
            }
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        )
    cpu = options.cpu or str(res.processes)
    memory = options.memory or f"{4 * res.processes}Gi"
    url = (
        ""
        if options.artifacts_url is None
        else f" --artifacts-url {shlex.quote(options.artifacts_url)}"
    )
    run = (
        f'printf "%s" "${JOB_ENV}" > /tmp/job.json && exec torchrun --no-python '
        f"model-trainer run --ranks-from-env --data-root {shlex.quote(options.data_root)} "
        f"--artifacts-root {shlex.quote(options.artifacts_root)}{url} /tmp/job.json"
    )
    trainer: dict[str, JsonValue] = {
        "image": options.image,
        "command": ["sh", "-c", run],
        "numNodes": res.nodes,
        "numProcPerNode": res.processes,
        "resourcesPerNode": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu, "memory": memory},
        },
        "env": env,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": metadata,
        "spec": {
            "runtimeRef": {
                "name": options.runtime,
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
            },
            "trainer": trainer,
        },
    }


def rank_from_env(job: SubmitJobV1, environ: Mapping[str, str]) -> Rank:
    """This process's rank in ``job`` as ``torchrun`` describes it: ``RANK`` and
    ``WORLD_SIZE``; ``MASTER_ADDR`` and ``MASTER_PORT`` are read by the ``env://`` rendezvous.
    COMMAND_INVALID when they are missing or the world is not ``nodes x processes``."""
    names = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [name for name in names if not environ.get(name)]
    if missing:
        raise ModelTrainerError(
            ModelTrainerErrorCode.COMMAND_INVALID,
            f"--ranks-from-env needs torchrun's environment: {', '.join(missing)} unset",
            details={"missing": list(missing)},
        )
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    except ValueError:
        raise ModelTrainerError(
            ModelTrainerErrorCode.COMMAND_INVALID,
            "RANK and WORLD_SIZE must be integers",
            details={"RANK": environ["RANK"], "WORLD_SIZE": environ["WORLD_SIZE"]},
        ) from None
    expected = job.resources.world
    if world != expected or not 0 <= rank < world:
        raise ModelTrainerError(
            ModelTrainerErrorCode.COMMAND_INVALID,
            f"torchrun started rank {rank} of {world} processes; the job asks for "
            f"{job.resources.nodes} nodes x {job.resources.processes} processes = {expected}",
            details={"field": "resources", "rank": rank, "world": world, "expected": expected},
        )
    # No memory budget in a pod: the strategy as asked (auto: ddp), the same on every rank.
    return Rank(rank, world, strategy_of(job, None), "env://")
