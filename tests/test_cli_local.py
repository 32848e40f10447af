"""`model-trainer run` trains without Kafka; `model-trainer sample` generates from its artifact.

The commands run in the test's process (typer's runner, the real app): a new interpreter
would import torch and transformers again, 18 s of CPU, for what the command does in one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_trainer.commands import cli
from model_trainer.commands.cli import app
from typer.testing import CliRunner, Result

CORPUS = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 80


@pytest.fixture(autouse=True)
def _in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In ``tmp_path``, as a user in their folder. The session keeps its logging: `run` would
    point it at the runner's stderr, and the loggers cached then would write to it, closed,
    in the tests that come after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "configure_logging", lambda level, fmt: None)


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.mark.slow  # imports transformers for its backend: not the fast suite
def test_run_prints_events_then_sample_generates(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text(CORPUS)
    job = {
        "type": "trainer.job.submit.v1",
        "job_id": "local-1",
        "user_id": 1,
        "backend": "gpt2",
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
        "data": {"corpus_path": "corpus.txt"},
        "training": {"max_steps": 8, "batch_size": 4, "eval_every": 4, "eval_batches": 1},
        "progress": {"every_steps": 2},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = _cli("run", "job.json", "--data-root", ".", "--artifacts-root", "out")
    assert done.exit_code == 0, done.output
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    types = [e["type"] for e in events]
    assert types[0] == "trainer.metrics.config.v1"
    assert types[-1] == "trainer.metrics.completed.v1"
    assert types.count("trainer.metrics.progress.v1") >= 4
    assert [e["seq"] for e in events] == list(range(len(events)))
    artifact = Path(events[-1]["artifact_path"])
    assert (artifact / "manifest.json").is_file()
    logged = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
    assert [(e["seq"], e["type"]) for e in logged] == [(e["seq"], e["type"]) for e in events]

    text = _cli("sample", str(artifact), "--prompt", "ROMEO", "--max-new-tokens", "20")
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("ROMEO")
    assert len(text.stdout.strip()) > len("ROMEO")


def test_run_reports_a_bad_corpus_as_a_failed_event(tmp_path: Path) -> None:
    job = {
        "type": "trainer.job.submit.v1",
        "job_id": "local-2",
        "user_id": 1,
        "backend": "char_lstm",
        "data": {"corpus_path": "../outside.txt"},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = _cli("run", "job.json", "--data-root", ".")
    assert done.exit_code == 1
    failed = json.loads(done.stdout.splitlines()[-1])
    assert failed["type"] == "trainer.job.failed.v1"
    assert failed["code"] == "PATH_NOT_ALLOWED"


def test_sample_of_a_folder_without_an_artifact_is_one_line(tmp_path: Path) -> None:
    done = _cli("sample", str(tmp_path))
    assert done.exit_code == 2
    assert done.stderr.splitlines() == [
        f"MODEL_NOT_FOUND: no artifact (manifest.json) in {tmp_path}"
    ]
