"""The memory model's shape rules (:func:`model_trainer.core.capabilities.footprint`) that
the engine's measured-peak tests do not reach: dropout, autocast, and a pretrained folder."""

from __future__ import annotations

import pytest
from model_trainer.core.capabilities import Footprint, footprint
from model_trainer_contracts.commands import CharLstmModel, Gpt2Model, LlamaModel, PretrainedModel

VOCAB = 1000


@pytest.mark.parametrize("model", [Gpt2Model, LlamaModel])
def test_only_dropout_makes_activations_grow_faster_than_the_context(
    model: type[Gpt2Model] | type[LlamaModel],
) -> None:
    """Without dropout SDPA keeps no attention weights: twice the context, twice the
    activations. With it the weights materialise, a term quadratic in the context."""

    def activations(block_size: int, dropout: float) -> int:
        spec = model(block_size=block_size, dropout=dropout)
        return footprint(spec, VOCAB, half=False).activation_bytes

    assert activations(128, 0.0) == 2 * activations(64, 0.0)
    assert activations(128, 0.1) > 2 * activations(64, 0.1)
    assert activations(64, 0.1) > activations(64, 0.0)


def test_llama_under_autocast_keeps_fewer_activations_of_the_same_parameters() -> None:
    full, half = (footprint(LlamaModel(), VOCAB, half=h) for h in (False, True))
    assert full.parameters == half.parameters
    # The layers' share shrinks to 55%; the head's and the embedding's stay fp32.
    assert 0.55 < half.activation_bytes / full.activation_bytes < 0.7


def test_lstm_dropout_counts_only_between_layers() -> None:
    def activations(layers: int, dropout: float) -> int:
        spec = CharLstmModel(num_layers=layers, dropout=dropout)
        return footprint(spec, VOCAB, half=False).activation_bytes

    assert activations(1, 0.2) == activations(1, 0.0)
    assert activations(2, 0.2) > activations(2, 0.0)


def test_a_pretrained_models_footprint_comes_from_its_folder_not_its_spec() -> None:
    spec = PretrainedModel(path="models/tiny")
    assert footprint(spec, VOCAB, half=False) == Footprint(0, 0)
