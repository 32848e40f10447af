"""The pretrained backend: tiny random models of four architectures, saved by transformers into
the data root, fine-tuned through run_job and loaded back by AutoModelForCausalLM; folders it
must not load are refused with typed codes, at admission (without torch) and in the engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_trainer.core.admission import admit
from model_trainer.engine import run_job, sample
from model_trainer.engine.backends.pretrained import PretrainedBackend
from model_trainer.engine.tokenizer import train_bpe
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
)

from tests.engine import finetune_helpers
from tests.engine.engine_helpers import Env, Event, losses, make_text
from tests.engine.finetune_helpers import VOCAB, tiny_model

C = ModelTrainerErrorCode
POSITIONS = 64


def save_tiny(env: Env, arch: str, name: str = "tiny") -> Path:
    return finetune_helpers.save_tiny(env, arch, name, positions=POSITIONS)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox", "gpt2"])
def test_fine_tune_a_local_model_and_load_the_result(env: Env, arch: str) -> None:
    source = save_tiny(env, arch)
    events: list[Event] = []
    job = env.job("pretrained", training={"max_steps": 10, "learning_rate": 3e-3})
    assert job.tokenizer.kind == "model"  # omitted in the spec: the model's own
    done = run_job(env.ctx(job, events))
    logged = losses(events)
    assert logged[10] < logged[1]
    folder = Path(done.artifact_path)

    tuned = AutoModelForCausalLM.from_pretrained(str(folder))
    assert type(tuned) is type(AutoModelForCausalLM.from_pretrained(str(source)))
    before = load_file(str(source / "model.safetensors"))
    after = load_file(str(folder / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.eos_token == "<|endoftext|>"  # the model's tokenizer files, as they came
    inputs = tok("The king", return_tensors="pt")
    out = tuned.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5
    assert sample(folder, "The king", 4, 0.0, seed=0).startswith("The king")


def test_freeze_embeddings(env: Env) -> None:
    source = save_tiny(env, "gpt2")
    job = env.job("pretrained", model={"freeze_embeddings": True}, training={"max_steps": 3})
    done = run_job(env.ctx(job, []))
    before = load_file(str(source / "model.safetensors"))
    after = load_file(str(Path(done.artifact_path) / "model.safetensors"))
    assert torch.equal(before["transformer.wte.weight"], after["transformer.wte.weight"])
    assert not torch.equal(
        before["transformer.h.0.mlp.c_fc.weight"], after["transformer.h.0.mlp.c_fc.weight"]
    )


def _pickle_only(env: Env) -> Path:
    folder = env.data_root / "models" / "pickled"
    torch.manual_seed(0)
    model = tiny_model("gpt2", POSITIONS)
    model.config.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    train_bpe(make_text(), VOCAB, 2).save_pretrained(folder)
    return folder


def _refusal(job: SubmitJobV1, env: Env) -> ModelTrainerError:
    with pytest.raises(ModelTrainerError) as err:
        admit(job, data_root=env.data_root)
    return err.value


def test_pickled_weights_are_refused_at_admission_and_in_the_engine(env: Env) -> None:
    _pickle_only(env)
    job = env.job("pretrained", model={"path": "models/pickled"})
    assert _refusal(job, env).code == C.MODEL_FORMAT_UNSUPPORTED
    with pytest.raises(ModelTrainerError) as err:
        PretrainedBackend().create(job.model, VOCAB, env.data_root)
    assert err.value.code == C.MODEL_FORMAT_UNSUPPORTED
    events: list[Event] = []
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, events))
    assert err.value.code == C.MODEL_FORMAT_UNSUPPORTED
    assert events == []

    # The service's check runs without torch or transformers.
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from model_trainer.core.admission import admit\n"
        "from model_trainer_contracts import ModelTrainerError, SubmitJobV1\n"
        f"job = SubmitJobV1.model_validate_json({job.model_dump_json()!r})\n"
        "try:\n"
        f"    admit(job, data_root=Path({str(env.data_root)!r}))\n"
        "except ModelTrainerError as exc:\n"
        "    print(exc.code)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split("\n")[:2] == ["MODEL_FORMAT_UNSUPPORTED", "[]"]


def test_folders_that_cannot_load_are_refused(env: Env) -> None:
    source = save_tiny(env, "llama")
    assert _refusal(env.job("pretrained", model={"path": "../x"}), env).code == C.PATH_NOT_ALLOWED
    missing = env.job("pretrained", model={"path": "models/none"})
    assert _refusal(missing, env).code == C.MODEL_NOT_FOUND
    too_long = env.job("pretrained", model={"block_size": 65})
    assert _refusal(too_long, env).code == C.INVALID_MODEL_SIZE
    char = env.job("pretrained", tokenizer={"kind": "char"})
    assert _refusal(char, env).code == C.UNSUPPORTED_BACKEND
    assert _refusal(env.job("gpt2", tokenizer={"kind": "model"}), env).code == C.UNSUPPORTED_BACKEND
    assert _refusal(env.job("pretrained", init_from="x"), env).code == C.UNSUPPORTED_BACKEND

    # an architecture only remote code implements: refused, never run
    custom = env.data_root / "models" / "custom"
    custom.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (custom / name).write_bytes((source / name).read_bytes())
    config = json.loads((source / "config.json").read_text())
    config |= {"model_type": "my-own-llm", "auto_map": {"AutoModelForCausalLM": "m.MyLM"}}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "m.py").write_text("raise SystemExit('remote code ran')\n")
    job = env.job("pretrained", model={"path": "models/custom"})
    admit(job, data_root=env.data_root)  # the folder looks right; only loading can tell
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, []))
    assert err.value.code == C.MODEL_FORMAT_UNSUPPORTED
    assert err.value.stage == "prepare"
