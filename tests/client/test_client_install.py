"""The light client installs and runs alone (with the contracts): no torch, no service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_client_installs_and_runs_without_torch_or_the_service(tmp_path: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv is not None, "uv is neither in the venv nor on PATH: run `make install`"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv = tmp_path / "venv"
    made = _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env, tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    install = [
        *(uv, "pip", "install", "--quiet", "--python", str(python)),
        *(str(ROOT / "contracts"), str(ROOT / "client")),
    ]
    done = _run(install, env, tmp_path)
    if done.returncode != 0:  # no network: everything needed may still sit in uv's cache
        done = _run([*install, "--offline"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    ran = _run([str(python), "-c", SNIPPET], {**env, "PYTHONSAFEPATH": "1"}, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "client-alone-ok"
    helped = _run([str(venv / "bin" / "model-trainer-client"), "--help"], env, tmp_path)
    assert helped.returncode == 0, helped.stderr
    for command in ("submit", "cancel", "status", "jobs", "watch", "dashboard", "export", "sweep"):
        assert command in helped.stdout
    no_extra = _run(
        [str(venv / "bin" / "model-trainer-client"), "export", "tensorboard", "--logdir", "tb"],
        env,
        tmp_path,
    )
    assert no_extra.returncode == 2
    assert "model-trainer-client[tensorboard]" in no_extra.stderr
    no_mlflow = _run(
        [str(venv / "bin" / "model-trainer-client"), "export", "mlflow", "--tracking-uri", "x"],
        env,
        tmp_path,
    )
    assert no_mlflow.returncode == 2
    assert "model-trainer-client[mlflow]" in no_mlflow.stderr
    (tmp_path / "sweep.yaml").write_text("name: s\n")
    no_optuna = _run(
        [str(venv / "bin" / "model-trainer-client"), "sweep", "sweep.yaml"], env, tmp_path
    )
    assert no_optuna.returncode == 2
    assert "model-trainer-client[sweep]" in no_optuna.stderr
