"""The contracts distribution installs and works alone: pydantic, no torch/transformers/kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.venvs import installed_alone

SNIPPET = """
import importlib.util, json, sys
from model_trainer_contracts import decode_command, decode_event, decode_event_tolerant, encode
from model_trainer_contracts.examples import CONFIG, EXAMPLES
from model_trainer_contracts.schema import MESSAGES, asyncapi_document, dumps
from model_trainer_contracts.seed import decode_trainer_metrics_event, is_config

for spec in MESSAGES:
    decode = decode_command if spec.kind == "command" else decode_event
    assert decode(encode(spec.example)) == spec.example, spec.type
assert len(EXAMPLES) == len(MESSAGES) == 8
assert decode_event_tolerant(b'{"type": "trainer.metrics.future.v9"}') is None
assert is_config(decode_trainer_metrics_event(encode(CONFIG)))
assert json.loads(dumps(asyncapi_document()))["asyncapi"] == "3.0.0"
heavy = ("torch", "transformers", "aiokafka")
loaded = [name for name in heavy if name in sys.modules]
installed = [name for name in heavy if importlib.util.find_spec(name) is not None]
assert not loaded and not installed, (loaded, installed)
print("contracts-alone-ok")
"""


@pytest.mark.slow
def test_contracts_install_and_run_without_the_service(tmp_path: Path) -> None:
    venv = installed_alone(tmp_path, "contracts")
    ran = venv.run("python", "-c", SNIPPET, env={"PYTHONSAFEPATH": "1"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "contracts-alone-ok"
