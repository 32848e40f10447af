"""``llama``: transformers' ``LlamaForCausalLM`` from a fresh ``LlamaConfig``.

The artifact is a stock transformers checkpoint (``AutoModelForCausalLM`` loads the job folder
as is). Training and evaluation run a lean forward over the model's own modules and weights:
the same arithmetic as ``LlamaForCausalLM.forward`` (a test holds them equal) without what a
training step never needs: no mask or position ids built per call, rotary factors computed
once instead of every forward, RMSNorm as one fused op instead of six, fewer and larger
matrix products, attention straight to ``scaled_dot_product_attention(is_causal=True)``, no
cache, no output objects. On a small model's CPU step the elementwise passes and op count are
the cost (see the README's performance notes); on a GPU the same forward compiles whole,
without the mask transformers builds while tracing.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from model_trainer_contracts import LlamaModel
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP

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


class _RmsNorm(torch.autograd.Function):
    """RMSNorm with a hand-written backward: on CPU torch has a fused forward but derives the
    backward from ~15 elementwise ops; this one takes 9."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        normed = x * rstd
        ctx.save_for_backward(normed, rstd, weight)
        return normed * weight

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        normed, rstd, weight = _saved(ctx)
        grad_weight = (grad * normed).reshape(-1, grad.size(-1)).sum(0)
        grad_normed = grad * weight
        dot = (grad_normed * normed).mean(-1, keepdim=True)
        return (grad_normed - normed * dot) * rstd, grad_weight, None


def _saved(ctx: FunctionCtx) -> tuple[Tensor, Tensor, Tensor]:
    saved: object = getattr(ctx, "saved_tensors", ())
    if not (isinstance(saved, tuple) and len(saved) == 3):
        raise RuntimeError("RMSNorm backward lost its saved tensors")
    normed, rstd, weight = saved
    if not all(isinstance(t, Tensor) for t in (normed, rstd, weight)):
        raise RuntimeError("RMSNorm backward lost its saved tensors")
    return normed, rstd, weight


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama's RMSNorm: the hand-written backward on CPU in eager mode, torch's elsewhere
    (fused CUDA kernels; compilers fuse either)."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        out: object = _RmsNorm.apply(x, weight, eps)
        if not isinstance(out, Tensor):
            raise TypeError("RMSNorm returned no tensor")
        return out
    return F.rms_norm(x, (x.size(-1),), weight, eps)


def rotate_pairs(x: Tensor, turn: Tensor, *, complex_form: bool) -> Tensor:
    """``x`` (B, T, heads, Q) with each interleaved pair (2i, 2i+1) multiplied, as a complex
    number, by ``turn`` (T, Q/2): one complex multiply, or (``complex_form`` False) the same
    product in real arithmetic, which compilers fuse."""
    b, t, heads, q = x.shape
    pairs = x.float().reshape(b, t, heads, q // 2, 2)
    turn = turn[:, None]
    if complex_form:
        out = torch.view_as_real(torch.view_as_complex(pairs) * turn)
    else:
        re, im = pairs.unbind(-1)
        cos, sin = turn.real, turn.imag
        out = torch.stack([re * cos - im * sin, re * sin + im * cos], -1)
    return out.reshape(b, t, heads, q).type_as(x)


class LlamaNet(nn.Module):
    """A ``LlamaForCausalLM`` (``self.hf``) whose ``forward(x)`` returns logits, leanly.

    Per layer the lean forward makes two matrix products where transformers makes five:
    q, k and v in one (their weights concatenated per call) and gate and up in one. The
    rotary embedding is one complex multiply (on CPU; an equivalent real form elsewhere) in
    place of ~8 elementwise ops: the q and k weight rows of every head are permuted from
    transformers' half-split layout (rotate_half) to interleaved pairs, which changes no score
    (q·k is the same sum in any order of its terms, as long as q and k share the order)."""

    def __init__(self, spec: LlamaModel, vocab_size: int) -> None:
        super().__init__()
        self.hf = LlamaForCausalLM(llama_config(spec, vocab_size))
        self.hf.set_attn_implementation("sdpa")
        self.heads = spec.num_attention_heads
        self.kv_heads = llama_kv_heads(spec)
        self.head_dim = spec.hidden_size // spec.num_attention_heads
        self.eps = float(self.hf.config.rms_norm_eps)
        self.dropout = spec.dropout
        half = self.head_dim // 2
        # Within a head: interleaved position 2i takes half-split row i, 2i+1 takes i + Q/2.
        pairs = torch.stack([torch.arange(half), torch.arange(half) + half], -1).reshape(-1)
        qk_heads = self.heads + self.kv_heads
        qk_rows = (torch.arange(qk_heads)[:, None] * self.head_dim + pairs).reshape(-1)
        v_rows = torch.arange(self.kv_heads * self.head_dim) + qk_heads * self.head_dim
        self.qkv_rows = nn.Buffer(torch.cat([qk_rows, v_rows]), persistent=False)
        inv_freq = 1.0 / (
            spec.rope_theta
            ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        )
        angles = torch.outer(torch.arange(spec.block_size, dtype=torch.float64), inv_freq)
        self.rope = nn.Buffer(  # (T, Q/2) unit complex numbers e^(i·θ)
            torch.polar(torch.ones_like(angles), angles).to(torch.complex64), persistent=False
        )

    def _rotate(self, x: Tensor) -> Tensor:
        """Rotate interleaved pairs of ``x`` (B, T, heads, Q) by their positions' angles."""
        complex_form = x.device.type == "cpu" and not torch.compiler.is_compiling()
        return rotate_pairs(x, self.rope[: x.size(1)], complex_form=complex_form)

    def _attention(self, attn: LlamaAttention, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        heads, kv, q_dim = self.heads, self.kv_heads, self.head_dim
        weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        qkv = F.linear(x, weight[self.qkv_rows]).view(b, t, heads + 2 * kv, q_dim)
        qk = self._rotate(qkv[:, :, : heads + kv])
        y = F.scaled_dot_product_attention(
            qk[:, :, :heads].transpose(1, 2),
            qk[:, :, heads:].transpose(1, 2),
            qkv[:, :, heads + kv :].transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            enable_gqa=kv != heads,
        )
        out: Tensor = attn.o_proj(y.transpose(1, 2).reshape(b, t, heads * q_dim))
        return out

    def _mlp(self, mlp: LlamaMLP, x: Tensor) -> Tensor:
        gate, up = F.linear(x, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])).chunk(2, -1)
        out: Tensor = mlp.down_proj(F.silu(gate) * up)
        return out

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        return rms_norm(x, weight, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        model = self.hf.model
        h: Tensor = model.embed_tokens(x)
        for layer in model.layers:
            if not isinstance(layer, LlamaDecoderLayer):
                raise TypeError(f"unexpected layer {type(layer).__name__}")
            h = h + self._attention(layer.self_attn, self._norm(h, layer.input_layernorm.weight))
            h = h + self._mlp(layer.mlp, self._norm(h, layer.post_attention_layernorm.weight))
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
