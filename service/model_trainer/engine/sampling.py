"""Generating text from a finished artifact, without Kafka (``model-trainer sample``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1
from pydantic import ValidationError
from torch import nn

from model_trainer.core.layout import MANIFEST
from model_trainer.engine.artifact import read_manifest
from model_trainer.engine.backend import Backend
from model_trainer.engine.registry import create_backend
from model_trainer.engine.tokenizer import TextTokenizer, load_from_job

_C = ModelTrainerErrorCode


@dataclass(frozen=True)
class LoadedModel:
    backend: Backend
    model: nn.Module
    tokenizer: TextTokenizer
    context: int


def load_artifact(artifact_dir: Path) -> LoadedModel:
    """The trained model of a job folder, on CPU in eval mode. MODEL_NOT_FOUND without a
    manifest; MODEL_LOAD_FAILED when the manifest or weights cannot be used."""
    try:
        manifest = read_manifest(artifact_dir)
    except (OSError, ValueError):
        raise ModelTrainerError(
            _C.MODEL_NOT_FOUND, f"no artifact ({MANIFEST}) in {artifact_dir}"
        ) from None
    try:
        job = SubmitJobV1.model_validate(manifest.get("job"))
    except ValidationError as exc:
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"the manifest's job spec is invalid: {exc.error_count()} errors"
        ) from None
    backend = create_backend(job.backend)
    tokenizer = load_from_job(artifact_dir)
    model = backend.load_artifact(job.model, tokenizer.vocab_size, artifact_dir)
    model.eval()
    return LoadedModel(backend, model, tokenizer, backend.context_length(job.model))


@torch.no_grad()
def generate(
    loaded: LoadedModel, prompt: str, max_new_tokens: int, temperature: float, seed: int
) -> str:
    """The continuation of ``prompt`` (not including it). ``temperature <= 0`` is greedy."""
    gen = torch.Generator().manual_seed(seed)
    start = loaded.tokenizer.encode(prompt or "\n").tolist()
    ids = torch.tensor([start], dtype=torch.long)
    for _ in range(max_new_tokens):
        logits = loaded.backend.logits(loaded.model, ids[:, -loaded.context :])[:, -1, :]
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
        ids = torch.cat([ids, nxt], dim=1)
    return loaded.tokenizer.decode(ids[0, len(start) :].tolist())


def sample(
    artifact_dir: Path, prompt: str, max_new_tokens: int, temperature: float, seed: int
) -> str:
    """``prompt`` followed by ``max_new_tokens`` tokens sampled from the artifact's model
    (same seed, same text)."""
    return prompt + generate(load_artifact(artifact_dir), prompt, max_new_tokens, temperature, seed)
