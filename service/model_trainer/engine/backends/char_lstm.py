"""``char_lstm``: embedding, a stacked ``nn.LSTM``, and a linear head over the vocabulary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from model_trainer_contracts import CharLstmModel
from safetensors.torch import save_file
from torch import Tensor, nn

from model_trainer.engine.registry import (
    Backend,
    Capabilities,
    ModelSpec,
    load_safetensors_into,
    register,
)

WEIGHTS = "model.safetensors"


class CharLstm(nn.Module):
    def __init__(self, spec: CharLstmModel, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, spec.embedding_dim)
        # nn.LSTM applies dropout between layers only; one layer would only warn.
        inner = spec.dropout if spec.num_layers > 1 else 0.0
        self.lstm = nn.LSTM(
            spec.embedding_dim, spec.hidden_size, spec.num_layers, batch_first=True, dropout=inner
        )
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        hidden: Tensor = self.lstm(self.embed(x))[0]
        out: Tensor = self.head(self.drop(hidden))
        return out


def _spec(spec: ModelSpec) -> CharLstmModel:
    if not isinstance(spec, CharLstmModel):
        raise TypeError(f"char_lstm cannot build {type(spec).__name__}")
    return spec


class CharLstmBackend(Backend):
    name: ClassVar[str] = "char_lstm"
    family: ClassVar[str] = "lstm"
    capabilities: ClassVar[Capabilities] = Capabilities(
        tokenizers=frozenset({"char", "job"}),
        devices=frozenset({"cpu", "cuda"}),
        precisions=frozenset({"fp32", "fp16", "bf16"}),
        max_parameters=200_000_000,
        max_context=4096,
        can_resume=True,
        can_finetune=True,
    )

    def context_length(self, spec: ModelSpec) -> int:
        return _spec(spec).block_size

    def core_parameters(self, spec: ModelSpec) -> int:
        s = _spec(spec)
        total = 0
        for layer in range(s.num_layers):
            inputs = s.embedding_dim if layer == 0 else s.hidden_size
            total += 4 * s.hidden_size * (inputs + s.hidden_size + 2)
        return total

    def build(self, spec: ModelSpec, vocab_size: int) -> nn.Module:
        return CharLstm(_spec(spec), vocab_size)

    def save_weights(self, model: nn.Module, out_dir: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / WEIGHTS), metadata={"format": "pt"})
        vocab = state["embed.weight"].shape[0]
        config = {"model_type": "char_lstm", "vocab_size": vocab}
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def load_weights(self, model: nn.Module, artifact_dir: Path) -> None:
        load_safetensors_into(model, artifact_dir / WEIGHTS, frozenset())


register(CharLstmBackend.name, CharLstmBackend)
