"""Folders of this repository installed alone in a fresh venv (with uv, from its cache when
there is no network), for the tests that check what a distribution needs and nothing more."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Venv:
    """A fresh venv and the environment to run its programs in (no VIRTUAL_ENV, no
    PYTHONPATH: nothing of the project's own venv leaks in)."""

    path: Path
    env: dict[str, str]
    cwd: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(
        self, program: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """One of the venv's programs (``bin/<program>``), run in ``cwd``."""
        command = [str(self.path / "bin" / program), *args]
        return _run(command, {**self.env, **(env or {})}, self.cwd)


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def installed_alone(tmp_path: Path, *folders: str) -> Venv:
    """A venv in ``tmp_path/venv`` holding these folders of the repository (and what their
    pyproject asks for) and nothing else."""
    # uv is a dev dependency, so it sits beside this interpreter in the project's venv.
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv is not None, "uv is neither in the venv nor on PATH: run `make install`"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv = Venv(tmp_path / "venv", env, tmp_path)
    made = _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv.path)], env, tmp_path)
    assert made.returncode == 0, made.stderr
    install = [
        *(uv, "pip", "install", "--quiet", "--python", str(venv.python)),
        *(str(ROOT / folder) for folder in folders),
    ]
    done = _run(install, env, tmp_path)
    if done.returncode != 0:  # no network: everything needed may still sit in uv's cache
        done = _run([*install, "--offline"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    return venv
