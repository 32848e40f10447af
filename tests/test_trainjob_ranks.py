"""The TrainJob's pod command, run as Kubeflow Trainer's torch runtime would run it on two
nodes: two ``sh -c`` processes, each with the runtime's ``PET_*`` variables and its own disk
(a folder of its own), which ``torchrun`` turns into one rank each of a gloo group; the
artifact goes to a real S3 server. No cluster: the pods are processes on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_kafka import free_port
from local_s3 import LocalS3
from model_trainer.core import storage
from model_trainer.core.trainjob import TrainJobOptions, trainjob_manifest
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    ProgressEventV1,
    SubmitJobV1,
    decode_event,
)
from pydantic import JsonValue

from tests.figures import Figure
from tests.storage.conftest import use_s3

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def _obj(value: JsonValue) -> dict[str, JsonValue]:
    assert isinstance(value, dict)
    return value


def test_two_nodes_run_the_trainjob_command_as_one_job(
    local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, figure: Figure
) -> None:
    use_s3(local_s3, monkeypatch)
    url = f"s3://model-trainer/{tmp_path.name}"
    job = SubmitJobV1.model_validate(
        {
            "job_id": "two-nodes",
            "user_id": 1,
            "backend": "gpt2",
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
            "data": {"inline_text": "to be or not to be, that is the question. " * 40},
            "training": {
                "max_steps": 4,
                "batch_size": 4,
                "eval_every": 2,
                "eval_batches": 1,
                "device": "cpu",
            },
            "resources": {"nodes": 2, "processes": 1, "strategy": "ddp"},
        }
    )
    options = TrainJobOptions(
        image="unused", data_root="data", artifacts_root="artifacts", artifacts_url=url
    )
    trainer = _obj(_obj(trainjob_manifest(job, options)["spec"])["trainer"])
    command, env = trainer["command"], trainer["env"]
    assert isinstance(command, list)
    assert isinstance(env, list)
    pod_env = {str(_obj(e)["name"]): str(_obj(e)["value"]) for e in env}  # no Secret here
    port = str(free_port())
    venv_bin = str(Path(sys.executable).parent)
    nodes = []
    started = time.monotonic()
    for index in range(2):
        home = tmp_path / f"node-{index}"
        (home / "data").mkdir(parents=True)
        runtime_env = {  # what the torch runtime sets in each node's container
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "1",
            "PET_NODE_RANK": str(index),
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": port,
        }
        process_env = os.environ | pod_env | runtime_env
        process_env["PATH"] = f"{venv_bin}:{process_env.get('PATH', '')}"
        process_env["OMP_NUM_THREADS"] = "1"
        nodes.append(
            subprocess.Popen(
                [str(c) for c in command],
                cwd=home,
                env=process_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=540) for node in nodes]
    seconds = time.monotonic() - started
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    events = [
        [decode_event(line.encode()) for line in out.splitlines() if line.startswith("{")]
        for out, _ in outputs
    ]
    kinds = [type(e).__name__ for e in events[0]]
    figure(f"two nodes of one rank each: {seconds:.0f} s; node 0 printed {kinds}")
    assert isinstance(events[0][0], ConfigEventV1)
    assert [e.step for e in events[0] if isinstance(e, ProgressEventV1)] == sorted(
        e.step for e in events[0] if isinstance(e, ProgressEventV1)
    )
    completed = events[0][-1]
    assert isinstance(completed, CompletedEventV1)
    assert completed.steps == 4
    assert completed.artifact_path == f"{url}/two-nodes"
    assert events[1] == []  # rank 1 prints nothing, as in the service
    found = storage.store().find(f"{url}/two-nodes", detail=True)
    assert any(key.endswith("/model.safetensors") for key in found)
