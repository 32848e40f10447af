"""``gpt2``: transformers' ``GPT2LMHeadModel`` from a fresh ``GPT2Config`` (SDPA attention).

The artifact is a stock transformers checkpoint: ``AutoModelForCausalLM.from_pretrained`` loads
the job folder as is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from model_trainer_contracts import Gpt2Model
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from model_trainer.core.capabilities import ModelSpec
from model_trainer.engine.backend import Backend, load_safetensors_into

WEIGHTS = "model.safetensors"
# The head shares the token embedding; the file stores it once.
TIED = frozenset({"lm_head.weight"})

# transformers leaves this untyped; through a typed name the call stays checked.
_disable_progress_bar: Callable[[], None] = hf_logging.disable_progress_bar
_disable_progress_bar()


class Gpt2Net(nn.Module):
    """Wraps the transformers model so ``forward(x)`` returns logits, as every backend's does."""

    def __init__(self, spec: Gpt2Model, vocab_size: int) -> None:
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
            # GPT-2's 50256 would point outside our vocabularies.
            bos_token_id=None,
            eos_token_id=None,
            use_cache=False,
        )
        self.hf = GPT2LMHeadModel(config)
        self.hf.set_attn_implementation("sdpa")

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.hf(input_ids=x).logits
        return logits


def _spec(spec: ModelSpec) -> Gpt2Model:
    if not isinstance(spec, Gpt2Model):
        raise TypeError(f"gpt2 cannot build {type(spec).__name__}")
    return spec


def _net(model: nn.Module) -> Gpt2Net:
    if not isinstance(model, Gpt2Net):
        raise TypeError(f"gpt2 cannot handle {type(model).__name__}")
    return model


class Gpt2Backend(Backend):
    name: ClassVar[str] = "gpt2"
    family: ClassVar[str] = "gpt2"

    def build(self, spec: ModelSpec, vocab_size: int) -> nn.Module:
        return Gpt2Net(_spec(spec), vocab_size)

    def save_weights(self, model: nn.Module, out_dir: Path) -> None:
        _net(model).hf.save_pretrained(out_dir, safe_serialization=True)

    def load_weights(self, model: nn.Module, artifact_dir: Path) -> None:
        load_safetensors_into(_net(model).hf, artifact_dir / WEIGHTS, TIED)
