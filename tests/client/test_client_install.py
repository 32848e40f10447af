"""The light client installs and runs alone (with the contracts): no torch, no service."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.venvs import installed_alone

SNIPPET = """
import importlib.util, sys
import model_trainer_client.cli, model_trainer_client.dashboard, model_trainer_client.tb_export
import model_trainer_client.mlflow_export
from model_trainer_client import JobBoard, decode_update
absent = ("torch", "transformers", "model_trainer", "tensorboardX", "mlflow", "optuna")
installed = [name for name in absent if importlib.util.find_spec(name) is not None]
loaded = [name for name in absent if name in sys.modules]
assert not installed and not loaded, (installed, loaded)
print("client-alone-ok")
"""


@pytest.mark.slow
def test_client_installs_and_runs_without_torch_or_the_service(tmp_path: Path) -> None:
    venv = installed_alone(tmp_path, "contracts", "client")
    ran = venv.run("python", "-c", SNIPPET, env={"PYTHONSAFEPATH": "1"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "client-alone-ok"
    helped = venv.run("model-trainer-client", "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("submit", "cancel", "status", "jobs", "watch", "dashboard", "export", "sweep"):
        assert command in helped.stdout
    no_extra = venv.run("model-trainer-client", "export", "tensorboard", "--logdir", "tb")
    assert no_extra.returncode == 2
    assert "model-trainer-client[tensorboard]" in no_extra.stderr
    no_mlflow = venv.run("model-trainer-client", "export", "mlflow", "--tracking-uri", "x")
    assert no_mlflow.returncode == 2
    assert "model-trainer-client[mlflow]" in no_mlflow.stderr
    (tmp_path / "sweep.yaml").write_text("name: s\n")
    no_optuna = venv.run("model-trainer-client", "sweep", "sweep.yaml")
    assert no_optuna.returncode == 2
    assert "model-trainer-client[sweep]" in no_optuna.stderr
