"""What the transformers backends share: saving a stock checkpoint, and FLOPs per token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from model_trainer.core.capabilities import flops_per_token

# transformers leaves these untyped; through typed names the calls stay checked.
_disable_progress_bar: Callable[[], None] = hf_logging.disable_progress_bar
_disable_progress_bar()
_output_embeddings: Callable[[PreTrainedModel], nn.Module | None] = (
    PreTrainedModel.get_output_embeddings
)


def token_embedding(model: PreTrainedModel) -> nn.Embedding:
    """The input token embedding of a transformers model."""
    found = model.get_input_embeddings()
    if not isinstance(found, nn.Embedding):
        raise TypeError(f"unexpected input embedding {type(found).__name__}")
    return found


def save_hf(model: PreTrainedModel, out_dir: Path) -> None:
    """``save_pretrained``: config.json, generation_config.json, model.safetensors."""
    model.save_pretrained(out_dir)


def _config_int(model: PreTrainedModel, *names: str) -> int:
    for name in names:
        value: object = getattr(model.config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def matmul_parameters(model: PreTrainedModel) -> int:
    """Parameters used in matrix multiplications: all, less embedding tables (token lookups,
    position tables), plus the output head when it is tied to the token embedding."""
    total = sum(p.numel() for p in model.parameters())
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    head = _output_embeddings(model)
    if isinstance(head, nn.Linear) and head.weight is token_embedding(model).weight:
        return total - tables + head.weight.numel()  # shared: counted once, as a table
    return total - tables


def hf_flops_per_token(model: PreTrainedModel, context: int) -> float:
    """nanoGPT's FLOPs per token (6N + 12·L·H·Q·T) from a transformers model's config."""
    layers = _config_int(model, "num_hidden_layers", "n_layer")
    heads = _config_int(model, "num_attention_heads", "n_head")
    width = _config_int(model, "hidden_size", "n_embd")
    head_dim = _config_int(model, "head_dim") or (width // heads if heads else 0)
    return flops_per_token(matmul_parameters(model), layers, heads, head_dim, context)
