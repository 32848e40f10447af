"""What each backend can do, and the arithmetic of its model shapes, without building one.

An explicit table over the closed ``BackendName`` set: the service checks jobs against it at
acceptance (no torch), and each engine backend reads its own row.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_trainer_contracts import CharLstmModel, Gpt2Model

ModelSpec = CharLstmModel | Gpt2Model


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports. ``max_parameters`` bounds the non-embedding parameter count."""

    tokenizers: frozenset[str]
    devices: frozenset[str]
    precisions: frozenset[str]
    max_parameters: int
    max_context: int
    can_resume: bool
    can_finetune: bool


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
    ),
}


def context_length(spec: ModelSpec) -> int:
    """Tokens per training window."""
    if isinstance(spec, CharLstmModel):
        return spec.block_size
    return spec.block_size


def core_parameters(spec: ModelSpec) -> int:
    """Parameters that do not scale with the vocabulary."""
    if isinstance(spec, CharLstmModel):
        total = 0
        for layer in range(spec.num_layers):
            inputs = spec.embedding_dim if layer == 0 else spec.hidden_size
            total += 4 * spec.hidden_size * (inputs + spec.hidden_size + 2)
        return total
    per_layer = 12 * spec.n_embd * spec.n_embd + 13 * spec.n_embd
    return spec.n_layer * per_layer + spec.block_size * spec.n_embd + 2 * spec.n_embd
