"""``llama``: transformers' ``LlamaForCausalLM`` from a fresh ``LlamaConfig``.

The artifact is a stock transformers checkpoint (``AutoModelForCausalLM`` loads the job folder
as is). Training and evaluation run a lean forward over the model's own modules and weights:
the same arithmetic as ``LlamaForCausalLM.forward`` (a test holds them equal) without what a
training step never needs: no mask or position ids built per call, rotary tables computed
once instead of every forward, RMSNorm as one fused op instead of six, attention straight to
``scaled_dot_product_attention(is_causal=True)``, no cache, no output objects. On a CPU most of
a small model's step is op dispatch, so the op count is the cost (see the README's
performance notes); on a GPU the same forward compiles without graph breaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from model_trainer_contracts import LlamaModel
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

from model_trainer.core.capabilities import ModelSpec, llama_intermediate_size, llama_kv_heads
from model_trainer.engine.backend import Backend, load_safetensors_into
from model_trainer.engine.backends.hf import hf_flops_per_token, save_hf

WEIGHTS = "model.safetensors"
TIED = frozenset({"lm_head.weight"})  # stored once when tied


def llama_config(spec: LlamaModel, vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=llama_intermediate_size(spec),
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=llama_kv_heads(spec),
        max_position_embeddings=spec.block_size,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=spec.tie_word_embeddings,
        attention_dropout=spec.dropout,
        # Llama's 1 and 2 would name tokens of our vocabularies that are not BOS/EOS.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=False,
    )


class LlamaNet(nn.Module):
    """A ``LlamaForCausalLM`` (``self.hf``) whose ``forward(x)`` returns logits, leanly."""

    def __init__(self, spec: LlamaModel, vocab_size: int) -> None:
        super().__init__()
        self.hf = LlamaForCausalLM(llama_config(spec, vocab_size))
        self.hf.set_attn_implementation("sdpa")
        self.heads = spec.num_attention_heads
        self.kv_heads = llama_kv_heads(spec)
        self.head_dim = spec.hidden_size // spec.num_attention_heads
        self.eps = float(self.hf.config.rms_norm_eps)
        self.dropout = spec.dropout
        # The default rotary embedding, computed once: q·cos + rotate_half(q)·sin, where
        # rotate_half(q) = roll(q, Q/2)·(-1 on the first half), folded into the sin table.
        inv_freq = 1.0 / (
            spec.rope_theta
            ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        )
        angles = torch.outer(torch.arange(spec.block_size, dtype=torch.float64), inv_freq)
        self.rope_cos = nn.Buffer(torch.cat([angles, angles], -1).cos().float(), persistent=False)
        self.rope_sin = nn.Buffer(
            torch.cat([-angles.sin(), angles.sin()], -1).float(), persistent=False
        )

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return x * cos + x.roll(self.head_dim // 2, -1) * sin

    def _attention(self, attn: LlamaAttention, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            self._rotate(q, cos, sin),
            self._rotate(k, cos, sin),
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            enable_gqa=self.kv_heads != self.heads,
        )
        out: Tensor = attn.o_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        return out

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),), weight, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        model = self.hf.model
        h: Tensor = model.embed_tokens(x)
        t = x.size(1)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for layer in model.layers:
            if not isinstance(layer, LlamaDecoderLayer):
                raise TypeError(f"unexpected layer {type(layer).__name__}")
            h = h + self._attention(
                layer.self_attn, self._norm(h, layer.input_layernorm.weight), cos, sin
            )
            h = h + layer.mlp(self._norm(h, layer.post_attention_layernorm.weight))
        logits: Tensor = self.hf.lm_head(self._norm(h, model.norm.weight))
        return logits


def _spec(spec: ModelSpec) -> LlamaModel:
    if not isinstance(spec, LlamaModel):
        raise TypeError(f"llama cannot build {type(spec).__name__}")
    return spec


def _net(model: nn.Module) -> LlamaNet:
    if not isinstance(model, LlamaNet):
        raise TypeError(f"llama cannot handle {type(model).__name__}")
    return model


class LlamaBackend(Backend):
    name: ClassVar[str] = "llama"
    family: ClassVar[str] = "llama"

    def build(self, spec: ModelSpec, vocab_size: int) -> nn.Module:
        return LlamaNet(_spec(spec), vocab_size)

    def save_weights(self, model: nn.Module, out_dir: Path) -> None:
        save_hf(_net(model).hf, out_dir)

    def load_weights(self, model: nn.Module, artifact_dir: Path) -> None:
        net = _net(model)
        tied = TIED if net.hf.config.tie_word_embeddings else frozenset()
        load_safetensors_into(net.hf, artifact_dir / WEIGHTS, tied)

    def flops_per_token(self, model: nn.Module, context: int) -> float:
        return hf_flops_per_token(_net(model).hf, context)
