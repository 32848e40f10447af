"""What each backend can do, and the arithmetic of its model shapes, without building one.

An explicit table over the closed ``BackendName`` set: the service checks jobs against it at
acceptance (no torch), and each engine backend reads its own row.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_trainer_contracts import CharLstmModel, Gpt2Model, LlamaModel, PretrainedModel

ModelSpec = CharLstmModel | Gpt2Model | LlamaModel | PretrainedModel


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports. ``max_parameters`` bounds the non-embedding parameter count
    (for ``pretrained``, every parameter of the folder's weights). ``can_compile``: whether
    ``torch.compile`` may be applied (``training.compile``)."""

    tokenizers: frozenset[str]
    devices: frozenset[str]
    precisions: frozenset[str]
    max_parameters: int
    max_context: int
    can_resume: bool
    can_finetune: bool
    can_compile: bool = False


_ALL_PRECISIONS = frozenset({"fp32", "fp16", "bf16"})
_BOTH_DEVICES = frozenset({"cpu", "cuda"})

CAPABILITIES: dict[str, Capabilities] = {
    "char_lstm": Capabilities(
        tokenizers=frozenset({"char", "job"}),
        devices=_BOTH_DEVICES,
        precisions=_ALL_PRECISIONS,
        max_parameters=200_000_000,
        max_context=4096,
        can_resume=True,
        can_finetune=True,
    ),
    "gpt2": Capabilities(
        tokenizers=frozenset({"char", "bpe", "job"}),
        devices=_BOTH_DEVICES,
        precisions=_ALL_PRECISIONS,
        max_parameters=1_000_000_000,
        max_context=8192,
        can_resume=True,
        can_finetune=True,
        can_compile=True,
    ),
    "llama": Capabilities(
        tokenizers=frozenset({"char", "bpe", "job"}),
        devices=_BOTH_DEVICES,
        precisions=_ALL_PRECISIONS,
        max_parameters=2_000_000_000,
        max_context=32_768,
        can_resume=True,
        can_finetune=True,
        can_compile=True,
    ),
    # Fine-tunes the folder it names: that folder is its init, so no init_from.
    "pretrained": Capabilities(
        tokenizers=frozenset({"model"}),
        devices=_BOTH_DEVICES,
        precisions=_ALL_PRECISIONS,
        max_parameters=2_000_000_000,
        max_context=131_072,
        can_resume=True,
        can_finetune=False,
        can_compile=True,
    ),
}


def context_length(spec: ModelSpec) -> int:
    """Tokens per training window."""
    if isinstance(spec, CharLstmModel):
        return spec.seq_len
    return spec.block_size


def llama_intermediate_size(spec: LlamaModel) -> int:
    """The SwiGLU width: as given, else 8/3 x hidden_size rounded up to a multiple of 64 (the
    parameter count of a 4x GELU MLP, in matrix sizes the kernels like)."""
    if spec.intermediate_size is not None:
        return spec.intermediate_size
    return -(-8 * spec.hidden_size // (3 * 64)) * 64


def llama_kv_heads(spec: LlamaModel) -> int:
    return spec.num_key_value_heads or spec.num_attention_heads


def core_parameters(spec: ModelSpec) -> int:
    """Parameters that do not scale with the vocabulary (0 for ``pretrained``: its size is
    read from the folder, see :mod:`model_trainer.core.pretrained`)."""
    if isinstance(spec, CharLstmModel):
        total = 0
        for layer in range(spec.num_layers):
            inputs = spec.embedding_dim if layer == 0 else spec.hidden_size
            total += 4 * spec.hidden_size * (inputs + spec.hidden_size + 2)
        return total
    if isinstance(spec, LlamaModel):
        d = spec.hidden_size
        kv_width = llama_kv_heads(spec) * (d // spec.num_attention_heads)
        attention = 2 * d * d + 2 * d * kv_width
        mlp = 3 * d * llama_intermediate_size(spec)
        return spec.num_hidden_layers * (attention + mlp + 2 * d) + d
    if isinstance(spec, PretrainedModel):
        return 0
    per_layer = 12 * spec.n_embd * spec.n_embd + 13 * spec.n_embd
    return spec.n_layer * per_layer + spec.block_size * spec.n_embd + 2 * spec.n_embd


def flops_per_token(parameters: int, layers: int, heads: int, head_dim: int, context: int) -> float:
    """Training FLOPs per token, nanoGPT's convention (PaLM appendix B): 6N for the matrix
    multiplications forward and backward, plus 12·L·H·Q·T for attention. ``parameters`` (N)
    counts the weights used in matrix multiplications: not position tables, and not an input
    embedding that is not tied to the output head."""
    return 6.0 * parameters + 12.0 * layers * heads * head_dim * context
