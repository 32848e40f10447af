"""The contracts distribution installs and works alone: pydantic, no torch/transformers/kafka."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_contracts_install_and_run_without_the_service(tmp_path: Path) -> None:
    # uv is a dev dependency, so it sits beside this interpreter in the project's venv.
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv is not None, "uv is neither in the venv nor on PATH: run `make install`"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv = tmp_path / "venv"
    made = _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env, tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "--quiet", "--python", str(python), str(ROOT / "contracts")]
    done = _run(install, env, tmp_path)
    if done.returncode != 0:  # no network: everything needed may still sit in uv's cache
        done = _run([*install, "--offline"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    ran = _run([str(python), "-c", SNIPPET], {**env, "PYTHONSAFEPATH": "1"}, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "contracts-alone-ok"
