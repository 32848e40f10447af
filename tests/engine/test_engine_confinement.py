"""A model folder is a boundary: a safetensors index naming a shard outside the folder (by
absolute path or by ``../``), a symlink out of it, or an earlier job's artifact holding one,
is refused with PATH_NOT_ALLOWED at acceptance and again by the engine before it loads, and
no byte of the outside file is read. A sharded folder that stays inside loads, and its size
is the shards', not every ``*.safetensors`` present."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from model_trainer.core.admission import admit
from model_trainer.core.pretrained import inspect_pretrained
from model_trainer.engine import run_job
from model_trainer.engine.backends.pretrained import PretrainedBackend, load_causal_lm
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from tests.engine.engine_helpers import Env, Event
from tests.engine.finetune_helpers import VOCAB, tiny_model
from tests.engine.test_engine_pretrained import POSITIONS, save_tiny

C = ModelTrainerErrorCode

# Paths opened by Python code (the index, configs, tokenizer files) while a test listens:
# the audit hook cannot be removed, so it records only while ``_OPENED`` is active.
_OPENED: list[str] = []
_LISTENING: list[bool] = [False]


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _LISTENING[0] and event == "open" and args and isinstance(args[0], (str, Path)):
        _OPENED.append(str(Path(args[0]).resolve()))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    _OPENED.clear()
    _LISTENING[0] = True
    yield _OPENED
    _LISTENING[0] = False


def _victim(env: Env) -> Path:
    """Another job's trained weights in the artifacts root, last read days ago (so that a
    read moves its access time even under ``relatime``)."""
    folder = env.artifacts_root / "victim"
    torch.manual_seed(1)
    model = tiny_model("gpt2", POSITIONS)
    model.save_pretrained(str(folder))
    weights = folder / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, (stat.st_mtime - 3 * 86400, stat.st_mtime))
    return weights


def _read_since(victim: Path, atime: float) -> bool:
    return victim.stat().st_atime != atime


def _attacker(env: Env, name: str, shard: str) -> None:
    """The folder of the report: a config, a tokenizer, a decoy weights file and an index
    whose weight_map sends every tensor to ``shard``."""
    folder = save_tiny(env, "gpt2", name)
    weights = folder / "model.safetensors"
    weights.rename(folder / "decoy.safetensors")
    tensors = {"transformer.wte.weight": torch.zeros(2, 2)}
    save_file(tensors, str(folder / "decoy.safetensors"))
    keys = GPT2LMHeadModel(GPT2Config.from_pretrained(str(folder))).state_dict().keys()
    index = {"metadata": {}, "weight_map": dict.fromkeys(keys, shard)}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _refused_everywhere(env: Env, job: SubmitJobV1, victim: Path, opened: list[str]) -> str:
    """The refusal's file, the same at acceptance, in the backend and in a whole run; no
    event published and the victim never read (by Python code, seen by the audit hook, nor
    by the Rust safetensors reader, which would move its access time)."""
    atime = victim.stat().st_atime
    with pytest.raises(ModelTrainerError) as at_admission:
        admit(job, data_root=env.data_root, artifacts_root=env.artifacts_root)
    assert at_admission.value.code == C.PATH_NOT_ALLOWED
    with pytest.raises(ModelTrainerError) as in_backend:
        PretrainedBackend().create(job.model, VOCAB, env.data_root)
    assert in_backend.value.code == C.PATH_NOT_ALLOWED
    events: list[Event] = []
    with pytest.raises(ModelTrainerError) as in_run:
        run_job(env.ctx(job, events))
    assert in_run.value.code == C.PATH_NOT_ALLOWED
    assert events == []
    assert str(victim.resolve()) not in opened
    assert not _read_since(victim, atime)
    file = at_admission.value.details["file"]
    assert isinstance(file, str)
    assert in_run.value.details["file"] == file
    return file


def test_an_index_naming_an_absolute_shard_is_refused(env: Env, opened: list[str]) -> None:
    victim = _victim(env)
    _attacker(env, "absolute", str(victim))
    job = env.job("pretrained", model={"path": "models/absolute"})
    assert _refused_everywhere(env, job, victim, opened) == str(victim)

    # What the check stops: transformers itself loads the victim's weights from this folder.
    atime = victim.stat().st_atime
    stolen = load_causal_lm(env.data_root / "models" / "absolute")
    assert _read_since(victim, atime)
    theirs = load_file(str(victim))
    assert torch.equal(
        stolen.state_dict()["transformer.h.0.mlp.c_fc.weight"],
        theirs["transformer.h.0.mlp.c_fc.weight"],
    )


def test_an_index_naming_a_shard_up_the_tree_is_refused(env: Env, opened: list[str]) -> None:
    victim = _victim(env)
    shard = "../../../artifacts/victim/model.safetensors"
    assert (env.data_root / "models" / "dotdot" / shard).resolve() == victim.resolve()
    _attacker(env, "dotdot", shard)
    job = env.job("pretrained", model={"path": "models/dotdot"})
    assert _refused_everywhere(env, job, victim, opened) == shard


def test_a_symlinked_shard_is_refused(env: Env, opened: list[str]) -> None:
    victim = _victim(env)
    folder = save_tiny(env, "gpt2", "linked")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(victim)
    job = env.job("pretrained", model={"path": "models/linked"})
    assert _refused_everywhere(env, job, victim, opened) == "model.safetensors"


def test_a_symlinked_tokenizer_and_a_config_naming_outside_weights_are_refused(
    env: Env,
) -> None:
    secret = env.root / "secret.json"
    secret.write_text("{}")
    folder = save_tiny(env, "gpt2", "tok")
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer_config.json").symlink_to(secret)
    with pytest.raises(ModelTrainerError) as err:
        inspect_pretrained(env.data_root, "models/tok")
    assert (err.value.code, err.value.details["file"]) == (
        C.PATH_NOT_ALLOWED,
        "tokenizer_config.json",
    )

    named = save_tiny(env, "gpt2", "named")
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(
        json.dumps({**config, "transformers_weights": "../tok/model.safetensors"})
    )
    with pytest.raises(ModelTrainerError) as err:
        inspect_pretrained(env.data_root, "models/named")
    assert err.value.code == C.PATH_NOT_ALLOWED


def test_a_symlink_loop_in_a_model_folder_is_refused(env: Env) -> None:
    """Python before 3.13 raises RuntimeError, not OSError, resolving a loop: the poison soak
    saw it escape admission as INTERNAL_ERROR when a model's path named the data root."""
    folder = save_tiny(env, "gpt2", "looped")
    (folder / "loop-a").symlink_to(folder / "loop-b")
    (folder / "loop-b").symlink_to(folder / "loop-a")
    with pytest.raises(ModelTrainerError) as err:
        inspect_pretrained(env.data_root, "models/looped")
    assert err.value.code == C.PATH_NOT_ALLOWED
    assert err.value.details == {"path": "models/looped", "file": "loop-a"}


def test_an_init_from_artifact_with_a_symlink_out_is_refused(env: Env) -> None:
    victim = _victim(env)
    base = env.job("gpt2", job_id="base", tokenizer={"kind": "char"})
    run_job(env.ctx(base, []))
    weights = env.artifacts_root / "base" / "model.safetensors"
    weights.unlink()
    weights.symlink_to(victim)
    tuned = env.job("gpt2", job_id="tuned", init_from="base", tokenizer={"kind": "char"})
    with pytest.raises(ModelTrainerError) as at_admission:
        admit(tuned, data_root=env.data_root, artifacts_root=env.artifacts_root)
    assert at_admission.value.code == C.PATH_NOT_ALLOWED
    assert at_admission.value.details == {"path": "base", "file": "model.safetensors"}
    with pytest.raises(ModelTrainerError) as in_run:
        run_job(env.ctx(tuned, []))
    assert in_run.value.code == C.PATH_NOT_ALLOWED


def _sharded(env: Env) -> tuple[PreTrainedModel, Path]:
    """``models/sharded``: a tiny gpt2 in shards of 40 KB, its one-file weights removed."""
    torch.manual_seed(0)
    model = tiny_model("gpt2", POSITIONS)
    folder = save_tiny(env, "gpt2", "sharded")
    (folder / "model.safetensors").unlink()
    model.save_pretrained(str(folder), max_shard_size="40KB")
    return model, folder


def test_a_sharded_folder_inside_loads_and_counts_its_shards(env: Env) -> None:
    model, folder = _sharded(env)
    save_file({"big": torch.zeros(1000, 100)}, str(folder / "unused.safetensors"))
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1

    found = inspect_pretrained(env.data_root, "models/sharded")
    assert sorted(p.name for p in found.weights) == shards
    assert found.parameters == sum(p.numel() for p in model.parameters())  # not unused's
    job = env.job("pretrained", model={"path": "models/sharded"}, training={"max_steps": 2})
    admit(job, data_root=env.data_root, artifacts_root=env.artifacts_root)
    done = run_job(env.ctx(job, []))
    assert Path(done.artifact_path).is_dir()


def test_the_memory_estimate_counts_the_weights_the_folder_loads(env: Env) -> None:
    model, folder = _sharded(env)
    save_file({"big": torch.zeros(4000, 1000)}, str(folder / "unused.safetensors"))
    job = env.job("pretrained", model={"path": "models/sharded"})
    params = sum(p.numel() for p in model.parameters())
    with pytest.raises(ModelTrainerError) as err:
        admit(job, data_root=env.data_root, artifacts_root=env.artifacts_root, memory_budget_mb=1)
    assert err.value.code == C.RESOURCE_LIMIT_EXCEEDED
    breakdown = err.value.details["breakdown_mb"]
    assert isinstance(breakdown, dict)
    # fp32 weights, gradients and AdamW's two moments of the shards' parameters; the unused
    # 16 MB file is not counted.
    assert breakdown["weights"] == -(-4 * params // (1 << 20))
    assert breakdown["optimizer"] == -(-8 * params // (1 << 20))
    admit(job, data_root=env.data_root, artifacts_root=env.artifacts_root, memory_budget_mb=200)
