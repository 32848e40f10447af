"""The llama backend: its lean training forward is transformers' forward; its artifact is a
stock checkpoint that AutoModelForCausalLM and AutoTokenizer load and generate from."""

from __future__ import annotations

import json

import pytest
import torch
from model_trainer.core.capabilities import core_parameters, llama_intermediate_size
from model_trainer.engine import run_job, sample
from model_trainer.engine.backends.llama import LlamaNet, rms_norm, rotate_pairs
from model_trainer_contracts import LlamaModel
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from tests.engine.engine_helpers import Env, Event


@pytest.mark.parametrize(
    "shape",
    [
        {"num_key_value_heads": None, "tie_word_embeddings": True},
        {"num_key_value_heads": 1, "tie_word_embeddings": False, "rope_theta": 500.0},
    ],
)
def test_lean_forward_is_the_transformers_forward(shape: dict[str, object]) -> None:
    spec = LlamaModel.model_validate(
        {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32, "block_size": 24}
        | shape
    )
    torch.manual_seed(0)
    net = LlamaNet(spec, vocab_size=50)
    net.eval()
    x = torch.randint(50, (3, 24))
    stock: torch.Tensor = net.hf(input_ids=x).logits
    assert torch.allclose(net(x), stock, atol=1e-5)
    assert torch.allclose(net(x[:, :7]), net.hf(input_ids=x[:, :7]).logits, atol=1e-5)
    # and so are the gradients (the lean forward has its own RMSNorm backward on CPU)
    grads = []
    for logits in (net(x), net.hf(input_ids=x).logits):
        net.zero_grad()
        torch.autograd.backward((logits**2).mean())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6, rtol=1e-4), name
    # the shape arithmetic the service checks at acceptance agrees with the model built
    vocab_tables = sum(
        p.numel() for n, p in net.hf.named_parameters() if "embed" in n or "lm_head" in n
    )
    built = sum(p.numel() for p in net.parameters()) - vocab_tables
    assert core_parameters(spec) == built


def test_rms_norm_backward() -> None:
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, weight))
    expected = torch.nn.functional.rms_norm(x, (8,), weight, 1e-6)
    assert torch.allclose(rms_norm(x, weight, 1e-6), expected)


def test_rotation_forms_agree() -> None:
    turn = torch.polar(torch.ones(5, 4), torch.rand(5, 4) * 6)
    x = torch.randn(2, 5, 3, 8)
    complex_form = rotate_pairs(x, turn, complex_form=True)
    assert torch.allclose(complex_form, rotate_pairs(x, turn, complex_form=False), atol=1e-6)
    assert torch.allclose(complex_form.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_intermediate_size_default() -> None:
    assert llama_intermediate_size(LlamaModel(hidden_size=128)) == 384  # 8/3 x 128, up to 64s
    assert llama_intermediate_size(LlamaModel(hidden_size=768, num_attention_heads=12)) == 2048
    assert llama_intermediate_size(LlamaModel(intermediate_size=100)) == 100


@pytest.mark.parametrize("tokenizer", [{"kind": "char"}, {"kind": "bpe", "vocab_size": 300}])
def test_llama_artifact_loads_in_transformers(env: Env, tokenizer: dict[str, object]) -> None:
    events: list[Event] = []
    job = env.job("llama", tokenizer=tokenizer, model={"num_key_value_heads": 1})
    done = run_job(env.ctx(job, events))
    folder = env.artifacts_root / "job-1"
    assert done.artifact_path == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_key_value_heads"] == 1

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert isinstance(model, LlamaForCausalLM)
    tok = AutoTokenizer.from_pretrained(str(folder))
    inputs = tok("The king", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=True)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6
    text = tok.decode(out[0])
    assert isinstance(text, str)
    assert text.startswith("The king")
    # our sampler reads the same artifact
    assert sample(folder, "The ", 5, 0.0, seed=0).startswith("The ")
