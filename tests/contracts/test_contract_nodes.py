"""``resources.nodes``: processes are per node, the world is nodes x processes; commands
written before the field parse as they did."""

from __future__ import annotations

import json

import pytest
from model_trainer_contracts import SubmitJobV1, decode_command, encode
from pydantic import ValidationError


def _body(**resources: int) -> dict[str, object]:
    return {
        "type": "trainer.job.submit.v1",
        "job_id": "j",
        "user_id": 1,
        "backend": "gpt2",
        "data": {"inline_text": "hello world"},
        "training": {"batch_size": 12},
        "resources": resources,
    }


def test_a_command_without_nodes_is_one_node() -> None:
    old = json.dumps(_body(processes=2)).encode()
    job = decode_command(old)
    assert isinstance(job, SubmitJobV1)
    assert (job.resources.nodes, job.resources.processes, job.resources.world) == (1, 2, 2)
    again = decode_command(encode(job))
    assert again == job


def test_the_global_batch_splits_over_every_node_s_processes() -> None:
    job = SubmitJobV1.model_validate(_body(nodes=3, processes=2))
    assert job.resources.world == 6
    with pytest.raises(ValidationError, match="does not split over 8 processes"):
        SubmitJobV1.model_validate(_body(nodes=4, processes=2))


@pytest.mark.parametrize("nodes", [0, 65, 1.5])
def test_nodes_out_of_bounds_or_fractional_is_refused(nodes: object) -> None:
    body = _body() | {"resources": {"nodes": nodes}}
    with pytest.raises(ValidationError):
        SubmitJobV1.model_validate_json(json.dumps(body))
