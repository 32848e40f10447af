"""The pretrained backend in process, without training: the model folders and options it
refuses (each with its code), the model it loads from a folder, and the artifacts it writes
and loads back (full weights, an adapter over its base, the merged model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_trainer.engine.backends.pretrained import (
    ADAPTER_CONFIG,
    MERGED,
    PretrainedBackend,
    PretrainedNet,
    load_causal_lm,
)
from model_trainer_contracts import (
    AdapterSpec,
    ModelTrainerError,
    ModelTrainerErrorCode,
    PretrainedModel,
)
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

from tests.engine.engine_helpers import Env
from tests.engine.finetune_helpers import VOCAB, save_tiny

C = ModelTrainerErrorCode
POSITIONS = 64
BACKEND = PretrainedBackend()


def _spec(path: str = "models/tiny", **extra: object) -> PretrainedModel:
    return PretrainedModel.model_validate({"path": path, "block_size": 16, **extra})


def _code(exc: pytest.ExceptionInfo[ModelTrainerError]) -> str:
    return str(exc.value.code)


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(16).reshape(2, 8) % VOCAB
    positions = torch.arange(8).repeat(2, 1)
    return x, positions


@pytest.fixture
def gpt2(env: Env) -> Path:
    return save_tiny(env, "gpt2", positions=POSITIONS)


def test_the_backend_refuses_what_is_not_its_own(env: Env, gpt2: Path) -> None:
    spec = _spec()
    with pytest.raises(TypeError, match="loaded from its folder"):
        BACKEND.build(spec, VOCAB)
    other = env.job("gpt2").model
    with pytest.raises(TypeError, match="cannot build"):
        BACKEND.create(other, VOCAB, env.data_root)
    x, positions = _tokens()
    with pytest.raises(TypeError, match="cannot handle Linear"):
        BACKEND.packed_loss(nn.Linear(2, 2), x, x, positions)
    net = BACKEND.create(spec, VOCAB, env.data_root)
    # init_from is for the service's own backends: a pretrained run starts from its folder
    with pytest.raises(ModelTrainerError) as err:
        BACKEND.load_weights(net, gpt2)
    assert _code(err) == C.UNSUPPORTED_BACKEND


def test_a_folder_model_loads_with_its_tokenizer_and_trains(env: Env, gpt2: Path) -> None:
    net = BACKEND.create(_spec(freeze_embeddings=True), VOCAB, env.data_root)
    assert isinstance(net, PretrainedNet)
    assert net.adapter is None
    embedding = net.base().get_input_embeddings()
    assert isinstance(embedding, nn.Embedding)
    assert embedding.weight.requires_grad is False
    x, positions = _tokens()
    assert list(net(x, positions).shape) == [2, 8, VOCAB]
    loss = BACKEND.packed_loss(net, x, x, positions)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert BACKEND.flops_per_token(net, 16) > 0
    tokenizer = BACKEND.supplied_tokenizer(_spec(), env.data_root)
    assert tokenizer is not None
    assert tokenizer.vocab_size == VOCAB


def test_a_tokenizer_larger_than_the_model_s_embedding_is_refused(env: Env, gpt2: Path) -> None:
    with pytest.raises(ModelTrainerError) as err:
        BACKEND.create(_spec(), VOCAB + 1, env.data_root)
    assert _code(err) == C.MODEL_INCOMPATIBLE
    assert err.value.details == {"vocab_size": VOCAB + 1, "embedding_rows": VOCAB}


def test_a_window_longer_than_the_model_s_positions_is_refused(env: Env, gpt2: Path) -> None:
    with pytest.raises(ModelTrainerError) as err:
        BACKEND.create(_spec(block_size=POSITIONS + 1), VOCAB, env.data_root)
    assert _code(err) == C.INVALID_MODEL_SIZE
    assert err.value.details == {"block_size": POSITIONS + 1, "max_positions": POSITIONS}


def test_a_config_that_is_not_json_fails_to_load(gpt2: Path) -> None:
    (gpt2 / "config.json").write_text("{not json")
    with pytest.raises(ModelTrainerError) as err:
        load_causal_lm(gpt2)
    assert _code(err) == C.MODEL_LOAD_FAILED
    assert "config of 'tiny'" in str(err.value)


def test_an_unknown_architecture_is_unsupported(gpt2: Path) -> None:
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps(config | {"model_type": "no-such-llm"}))
    with pytest.raises(ModelTrainerError) as err:
        load_causal_lm(gpt2)
    assert _code(err) == C.MODEL_FORMAT_UNSUPPORTED
    assert err.value.details == {"path": "tiny"}


def test_a_model_that_is_not_a_causal_lm_is_unsupported(env: Env) -> None:
    folder = env.data_root / "models" / "t5"
    config = T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(config).save_pretrained(str(folder))
    with pytest.raises(ModelTrainerError) as err:
        load_causal_lm(folder)
    assert _code(err) == C.MODEL_FORMAT_UNSUPPORTED
    assert err.value.details == {"path": "t5", "model_type": "t5"}


def test_unreadable_weights_fail_to_load(gpt2: Path) -> None:
    (gpt2 / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ModelTrainerError) as err:
        load_causal_lm(gpt2)
    assert _code(err) == C.MODEL_LOAD_FAILED
    assert "weights of 'tiny'" in str(err.value)


def test_weights_missing_for_the_config_are_incompatible(gpt2: Path) -> None:
    weights = load_file(str(gpt2 / "model.safetensors"))
    gone = ["transformer.h.1.mlp.c_fc.bias", "transformer.h.1.mlp.c_fc.weight"]
    save_file(
        {k: v for k, v in weights.items() if k not in gone},
        str(gpt2 / "model.safetensors"),
        metadata={"format": "pt"},
    )
    with pytest.raises(ModelTrainerError) as err:
        load_causal_lm(gpt2)
    assert _code(err) == C.MODEL_INCOMPATIBLE
    assert err.value.details == {"missing": gone, "shape": []}


def test_weights_of_another_shape_fail_to_load(gpt2: Path) -> None:
    weights = load_file(str(gpt2 / "model.safetensors"))
    weights["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(3, 3)
    save_file(weights, str(gpt2 / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelTrainerError) as err:
        load_causal_lm(gpt2)
    assert _code(err) == C.MODEL_INCOMPATIBLE
    assert err.value.details == {
        "missing": [],
        "shape": ["transformer.h.0.mlp.c_fc.weight: [3, 3] in the file, [32, 128] by the config"],
    }


def test_an_adapter_must_name_modules_the_model_has(env: Env, gpt2: Path) -> None:
    net = BACKEND.create(_spec(), VOCAB, env.data_root)
    with pytest.raises(ModelTrainerError) as err:
        BACKEND.attach_adapter(net, AdapterSpec(target_modules=["no_such_proj"]))
    assert _code(err) == C.MODEL_INCOMPATIBLE
    assert err.value.details == {"target_modules": ["no_such_proj"]}
    tuned = BACKEND.attach_adapter(net, AdapterSpec())
    with pytest.raises(TypeError, match="already has an adapter"):
        BACKEND.attach_adapter(tuned, AdapterSpec())


def test_an_adapter_spec_without_peft_is_a_programming_error(env: Env, gpt2: Path) -> None:
    plain = BACKEND.create(_spec(), VOCAB, env.data_root)
    assert isinstance(plain, PretrainedNet)
    wrong = PretrainedNet(plain.base(), AdapterSpec())
    with pytest.raises(TypeError, match="without peft"):
        wrong.base()
    with pytest.raises(TypeError, match="without peft"):
        BACKEND.save_weights(wrong, env.root / "out")


def _adapted(env: Env, merge: bool) -> tuple[PretrainedNet, Path]:
    """A gpt2 net with a LoRA adapter whose weights moved off their zero start (as training
    would move them), saved to an artifact folder."""
    net = BACKEND.create(_spec(), VOCAB, env.data_root)
    tuned = BACKEND.attach_adapter(net, AdapterSpec(merge=merge))
    assert isinstance(tuned, PretrainedNet)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    out = env.root / ("merged" if merge else "adapter")
    BACKEND.save_weights(tuned, out)
    return tuned, out


def test_full_weights_artifact_loads_back(env: Env, gpt2: Path) -> None:
    net = BACKEND.create(_spec(), VOCAB, env.data_root)
    out = env.root / "full"
    BACKEND.save_weights(net, out)
    assert not (out / ADAPTER_CONFIG).exists()
    loaded = BACKEND.load_artifact(_spec(), VOCAB, out)
    x, positions = _tokens()
    net.eval()
    loaded.eval()
    assert torch.equal(net(x, positions), loaded(x, positions))


def test_an_adapter_artifact_loads_over_its_base(env: Env, gpt2: Path) -> None:
    tuned, out = _adapted(env, merge=False)
    assert (out / ADAPTER_CONFIG).is_file()
    assert not (out / MERGED).exists()
    loaded = BACKEND.load_artifact(_spec(), VOCAB, out)
    assert isinstance(loaded, PretrainedNet)
    assert isinstance(loaded.hf, PeftModel)
    assert BACKEND.flops_per_token(loaded, 16) >= BACKEND.flops_per_token(tuned, 16) > 0
    x, positions = _tokens()
    tuned.eval()
    loaded.eval()
    expected = tuned(x, positions)
    assert torch.allclose(loaded(x, positions), expected, atol=1e-5)
    # the adapter changed the model: the base alone answers otherwise
    base = PretrainedNet(load_causal_lm(gpt2)).eval()
    assert not torch.allclose(base(x, positions), expected, atol=1e-3)


def test_a_merged_artifact_loads_without_peft(env: Env, gpt2: Path) -> None:
    tuned, out = _adapted(env, merge=True)
    x, positions = _tokens()
    tuned.eval()
    expected = tuned(x, positions)
    assert (out / MERGED / "model.safetensors").is_file()
    # the merged weights are read, not the base: it may be gone by then
    shutil.rmtree(gpt2)
    loaded = BACKEND.load_artifact(_spec(), VOCAB, out)
    assert isinstance(loaded, PretrainedNet)
    assert loaded.adapter is None
    loaded.eval()
    assert torch.allclose(loaded(x, positions), expected, atol=1e-4)


def test_an_adapter_whose_base_is_gone_is_not_found(env: Env, gpt2: Path) -> None:
    _, out = _adapted(env, merge=False)
    shutil.rmtree(gpt2)
    with pytest.raises(ModelTrainerError) as err:
        BACKEND.load_artifact(_spec(), VOCAB, out)
    assert _code(err) == C.MODEL_NOT_FOUND
    assert err.value.details == {"base": str(gpt2)}


def test_an_adapter_config_that_is_not_json_fails_to_load(env: Env, gpt2: Path) -> None:
    _, out = _adapted(env, merge=False)
    (out / ADAPTER_CONFIG).write_text("[not json")
    with pytest.raises(ModelTrainerError) as err:
        BACKEND.load_artifact(_spec(), VOCAB, out)
    assert _code(err) == C.MODEL_LOAD_FAILED
    (out / ADAPTER_CONFIG).write_text("[]")  # JSON, but names no base
    with pytest.raises(ModelTrainerError) as err:
        BACKEND.load_artifact(_spec(), VOCAB, out)
    assert _code(err) == C.MODEL_NOT_FOUND


def test_an_adapter_whose_weights_do_not_fit_fails_to_load(env: Env, gpt2: Path) -> None:
    _, out = _adapted(env, merge=False)
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    (out / ADAPTER_CONFIG).write_text(json.dumps(config | {"r": config["r"] * 2}))
    with pytest.raises(ModelTrainerError) as err:
        BACKEND.load_artifact(_spec(), VOCAB, out)
    assert _code(err) == C.MODEL_LOAD_FAILED
    assert "adapter of 'adapter'" in str(err.value)
