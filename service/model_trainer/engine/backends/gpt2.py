"""``gpt2``: transformers' ``GPT2LMHeadModel`` from a fresh ``GPT2Config`` (SDPA attention).

The artifact is a stock transformers checkpoint: ``AutoModelForCausalLM.from_pretrained`` loads
the job folder as is. The MLP uses the exact GELU (``activation_function="gelu"``, as nanoGPT
does): GPT-2's own ``gelu_new`` is a tanh formula of eight elementwise ops, forward and back,
about a third of a small model's CPU step. Artifacts written with ``gelu_new`` keep it when
loaded (their config.json says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from model_trainer_contracts import Gpt2Model
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block

from model_trainer.core.capabilities import ModelSpec
from model_trainer.engine.backend import Backend, load_safetensors_into
from model_trainer.engine.backends.hf import hf_flops_per_token, save_hf

WEIGHTS = "model.safetensors"
# The head shares the token embedding; the file stores it once.
TIED = frozenset({"lm_head.weight"})
ACTIVATION = "gelu"


class Gpt2Net(nn.Module):
    """A ``GPT2LMHeadModel`` (``self.hf``) whose ``forward(x)`` returns logits, leanly: the
    same arithmetic as transformers' forward over its own modules (a test holds them equal),
    without the per-call mask checks, position ids, keyword plumbing and output objects a
    training step does not need, and straight to ``scaled_dot_product_attention(is_causal=
    True)``."""

    def __init__(self, spec: Gpt2Model, vocab_size: int, activation: str = ACTIVATION) -> None:
        super().__init__()
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=spec.block_size,
            n_embd=spec.n_embd,
            n_layer=spec.n_layer,
            n_head=spec.n_head,
            resid_pdrop=spec.dropout,
            embd_pdrop=spec.dropout,
            attn_pdrop=spec.dropout,
            activation_function=activation,
            # GPT-2's 50256 would point outside our vocabularies.
            bos_token_id=None,
            eos_token_id=None,
            use_cache=False,
        )
        self.hf = GPT2LMHeadModel(config)
        self.hf.set_attn_implementation("sdpa")
        self.heads = spec.n_head
        self.dropout = spec.dropout
        self.positions = nn.Buffer(torch.arange(spec.block_size), persistent=False)

    def _attention(self, attn: GPT2Attention, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = attn.c_attn(x).split(c, dim=2)
        shape = (b, t, self.heads, c // self.heads)
        y = F.scaled_dot_product_attention(
            q.view(shape).transpose(1, 2),
            k.view(shape).transpose(1, 2),
            v.view(shape).transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            scale=attn.scaling,
        )
        out: Tensor = attn.resid_dropout(attn.c_proj(y.transpose(1, 2).reshape(b, t, c)))
        return out

    def forward(self, x: Tensor) -> Tensor:
        body = self.hf.transformer
        h: Tensor = body.drop(body.wte(x) + body.wpe(self.positions[: x.size(1)]))
        for block in body.h:
            if not isinstance(block, GPT2Block):
                raise TypeError(f"unexpected block {type(block).__name__}")
            h = h + self._attention(block.attn, block.ln_1(h))
            h = h + block.mlp(block.ln_2(h))
        logits: Tensor = self.hf.lm_head(body.ln_f(h))
        return logits


def _spec(spec: ModelSpec) -> Gpt2Model:
    if not isinstance(spec, Gpt2Model):
        raise TypeError(f"gpt2 cannot build {type(spec).__name__}")
    return spec


def _net(model: nn.Module) -> Gpt2Net:
    if not isinstance(model, Gpt2Net):
        raise TypeError(f"gpt2 cannot handle {type(model).__name__}")
    return model


def _saved_activation(artifact_dir: Path) -> str:
    try:
        config: object = json.loads((artifact_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ACTIVATION
    found = config.get("activation_function") if isinstance(config, dict) else None
    return found if isinstance(found, str) else ACTIVATION


class Gpt2Backend(Backend):
    name: ClassVar[str] = "gpt2"
    family: ClassVar[str] = "gpt2"

    def build(self, spec: ModelSpec, vocab_size: int) -> nn.Module:
        return Gpt2Net(_spec(spec), vocab_size)

    def load_artifact(self, spec: ModelSpec, vocab_size: int, artifact_dir: Path) -> nn.Module:
        model = Gpt2Net(_spec(spec), vocab_size, _saved_activation(artifact_dir))
        self.load_weights(model, artifact_dir)
        return model

    def save_weights(self, model: nn.Module, out_dir: Path) -> None:
        save_hf(_net(model).hf, out_dir)

    def load_weights(self, model: nn.Module, artifact_dir: Path) -> None:
        load_safetensors_into(_net(model).hf, artifact_dir / WEIGHTS, TIED)

    def flops_per_token(self, model: nn.Module, context: int) -> float:
        return hf_flops_per_token(_net(model).hf, context)
