"""Artifacts: stock transformers loads a gpt2 artifact; the manifest digests every file."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from model_trainer.core.layout import MANIFEST, METRICS
from model_trainer.engine import run_job, sample
from model_trainer.engine.backends.gpt2 import Gpt2Net
from model_trainer_contracts import Gpt2Model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.engine.engine_helpers import Env, Event


@pytest.mark.parametrize("tokenizer", [{"kind": "char"}, {"kind": "bpe", "vocab_size": 300}])
def test_gpt2_artifact_loads_in_transformers(env: Env, tokenizer: dict[str, object]) -> None:
    events: list[Event] = []
    done = run_job(env.ctx(env.job("gpt2", tokenizer=tokenizer), events))
    folder = env.artifacts_root / "job-1"
    assert done.artifact_path == str(folder)

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    inputs = tok("The king", return_tensors="pt")
    torch.manual_seed(0)
    # block_size is 16: prompt and continuation must fit the position table
    out = model.generate(**inputs, max_new_tokens=6, do_sample=True)
    text = tok.decode(out[0])
    assert isinstance(text, str)
    assert text.startswith("The king")
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6


def test_gpt2_lean_forward_is_the_transformers_forward() -> None:
    torch.manual_seed(0)
    net = Gpt2Net(Gpt2Model(n_layer=2, n_head=4, n_embd=32, block_size=24), vocab_size=50)
    net.eval()
    x = torch.randint(50, (3, 24))
    assert torch.allclose(net(x), net.hf(input_ids=x).logits, atol=1e-5)
    assert torch.allclose(net(x[:, :5]), net.hf(input_ids=x[:, :5]).logits, atol=1e-5)


def test_manifest_digests_and_metrics_log(env: Env) -> None:
    events: list[Event] = []
    done = run_job(env.ctx(env.job(), events))
    folder = env.artifacts_root / "job-1"
    body = (folder / MANIFEST).read_bytes()
    assert done.manifest_digest == hashlib.sha256(body).hexdigest()
    manifest = json.loads(body)
    files = manifest["files"]
    assert set(files) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    for name, digest in files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert METRICS in manifest["not_digested"]
    assert (
        manifest["versions"]["torch"] == torch.__version__.split("+")[0]
        or manifest["versions"]["torch"]
    )
    # metrics.jsonl is written by whoever publishes the events (tests/test_cli_local.py)
    assert not (folder / METRICS).exists()


@pytest.mark.parametrize("backend", ["char_lstm", "gpt2"])
def test_sample_is_seeded(env: Env, backend: str) -> None:
    run_job(env.ctx(env.job(backend), []))
    folder = env.artifacts_root / "job-1"
    first = sample(folder, "The ", 20, 0.8, seed=3)
    assert first.startswith("The ")
    assert len(first) == len("The ") + 20  # char tokens: one character each
    assert sample(folder, "The ", 20, 0.8, seed=3) == first
    assert sample(folder, "", 5, 0.0, seed=0) == sample(folder, "", 5, 0.0, seed=1)
