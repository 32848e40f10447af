"""Model folders and artifacts named by URL on a real S3 (SeaweedFS): a ``pretrained`` model
at ``s3://...`` and ``init_from`` an artifact's URL are checked at acceptance from a head copy
(headers, no weights), held to the model-folder confinement rules, then fetched whole by the
engine and trained exactly as the same folder on local disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_trainer.core import storage
from model_trainer.core.admission import admit
from model_trainer.core.pretrained import inspect_pretrained
from model_trainer.core.remote_folders import use_downloads
from model_trainer.engine import run_job
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1
from pydantic import ValidationError
from safetensors.torch import load_file

from tests.engine.engine_helpers import Env
from tests.engine.test_engine_pretrained import save_tiny

pytestmark = pytest.mark.s3
_C = ModelTrainerErrorCode
BUCKET = "model-trainer"


def _upload(fs: storage.ObjectStore, folder: Path, url: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{url}/{path.relative_to(folder).as_posix()}")


def _code(job: SubmitJobV1, env: Env) -> ModelTrainerErrorCode | None:
    try:
        admit(job, data_root=env.data_root, artifacts_root=env.artifacts_root)
    except ModelTrainerError as exc:
        return exc.code
    return None


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_pretrained_model_from_a_bucket_trains_as_the_same_local_folder(
    s3: storage.ObjectStore, env: Env, tmp_path: Path
) -> None:
    source = save_tiny(env, "gpt2")
    url = f"s3://{BUCKET}/{tmp_path.name}/models/tiny"
    _upload(s3, source, url)
    training = {"max_steps": 3, "learning_rate": 3e-3}
    remote = env.job("pretrained", job_id="remote", model={"path": url}, training=training)

    # Acceptance (the service's way: head copies) reads headers, never the weights.
    use_downloads(tmp_path / "service-downloads", full=False)
    assert _code(remote, env) is None
    head = inspect_pretrained(env.data_root, url)
    local = inspect_pretrained(env.data_root, "models/tiny")
    assert head.parameters == local.parameters > 0
    assert head.path.name.endswith(".head")
    assert head.path.is_relative_to((tmp_path / "service-downloads").resolve())
    size = (source / "model.safetensors").stat().st_size
    assert (head.path / "model.safetensors").stat().st_size < size // 10

    # The engine (a worker on a node that never saw the folder) fetches it whole, then trains
    # it exactly as the local folder.
    node = Env(tmp_path / "node-b")
    done = run_job(node.ctx(remote, []))
    fetched = [p for p in (node.artifacts_root / ".downloads").iterdir() if p.is_dir()]
    assert [p.name.endswith(".head") for p in fetched] == [False]
    assert (fetched[0] / "model.safetensors").stat().st_size == size
    straight = run_job(env.ctx(env.job("pretrained", job_id="local", training=training), []))
    assert _same(_weights(Path(done.artifact_path)), _weights(Path(straight.artifact_path)))


def test_a_model_folder_in_a_bucket_is_confined_and_checked_at_acceptance(
    s3: storage.ObjectStore, env: Env, tmp_path: Path
) -> None:
    use_downloads(tmp_path / "service-downloads", full=False)
    base = f"s3://{BUCKET}/{tmp_path.name}"
    source = save_tiny(env, "gpt2")
    # Another user's weights beside the folders: an index must not reach them.
    s3.put_file(str(source / "model.safetensors"), f"{base}/victim/model.safetensors")

    def folder(name: str, shard: str | None = None, drop: tuple[str, ...] = ()) -> str:
        url = f"{base}/{name}"
        for path in sorted(source.iterdir()):
            if path.name not in drop and not (shard and path.name == "model.safetensors"):
                s3.put_file(str(path), f"{url}/{path.name}")
        if shard is not None:
            index = {"metadata": {}, "weight_map": {"transformer.wte.weight": shard}}
            s3.pipe_file(f"{url}/model.safetensors.index.json", json.dumps(index).encode())
        return url

    def code(url: str) -> ModelTrainerErrorCode | None:
        return _code(env.job("pretrained", model={"path": url}), env)

    assert code(folder("ok")) is None
    assert code(folder("escape", shard="../victim/model.safetensors")) is _C.PATH_NOT_ALLOWED
    assert code(folder("absolute", shard="/etc/passwd")) is _C.PATH_NOT_ALLOWED
    assert code(folder("no-tokenizer", drop=("tokenizer.json",))) is _C.TOKENIZER_NOT_FOUND
    pickled = folder("pickled", drop=("model.safetensors",))
    s3.pipe_file(f"{pickled}/pytorch_model.bin", b"\x80\x04pickle")
    assert code(pickled) is _C.MODEL_FORMAT_UNSUPPORTED
    assert code(f"{base}/missing") is _C.MODEL_NOT_FOUND
    assert code(f"{base}/victim/model.safetensors") is _C.MODEL_NOT_FOUND  # an object
    assert code("s3://key:secret@bucket/models/x") is _C.PATH_NOT_ALLOWED


def test_init_from_an_artifact_url_on_another_node(
    s3: storage.ObjectStore, env: Env, tmp_path: Path
) -> None:
    base = f"s3://{BUCKET}/{tmp_path.name}/artifacts"
    first = env.ctx(env.job("gpt2", job_id="base", training={"max_steps": 4}), [])
    first.artifacts_url = base
    url = run_job(first).artifact_path
    assert url == f"{base}/base"

    tune = {"max_steps": 3, "learning_rate": 1e-3}
    node = Env(tmp_path / "node-b")  # no file of job "base" on this disk
    use_downloads(tmp_path / "service-downloads", full=False)
    remote = node.job("gpt2", job_id="tuned", init_from=url, training=tune)
    assert _code(remote, node) is None
    missing = node.job("gpt2", job_id="tuned", init_from=f"{base}/nope", training=tune)
    assert _code(missing, node) is _C.MODEL_NOT_FOUND
    done = run_job(node.ctx(remote, []))
    # The same fine-tune from the local artifact on node A: the same weights.
    local = run_job(env.ctx(env.job("gpt2", job_id="tuned", init_from="base", training=tune), []))
    assert _same(_weights(Path(done.artifact_path)), _weights(Path(local.artifact_path)))
    with pytest.raises(ValidationError, match="init_from"):  # no credentials in a URL
        node.job("gpt2", init_from="s3://key:secret@bucket/x")
