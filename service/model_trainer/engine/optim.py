"""Optimizer and learning-rate schedule.

The schedule is a pure function of the step (nanoGPT's ``get_lr``), so resuming needs no
scheduler state: linear warmup, then constant, linear or cosine decay to ``min_lr``.
"""

from __future__ import annotations

import math

import torch
from model_trainer_contracts import TrainingSpec
from torch import nn


def build_optimizer(
    model: nn.Module, spec: TrainingSpec, *, fused: bool = False
) -> torch.optim.Optimizer:
    """AdamW (``fused``: torch's fused kernel, one call per step instead of a dozen per
    parameter) or SGD; weight decay applies to matrices and embeddings only (as in nanoGPT),
    never to biases and norms. Frozen parameters are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.learning_rate, momentum=spec.momentum)
    return torch.optim.AdamW(
        groups, lr=spec.learning_rate, betas=spec.betas, fused=True if fused else None
    )


def warmup_steps(spec: TrainingSpec, total_steps: int) -> int:
    """Steps of linear warmup: ``warmup_steps``, or ``warmup_ratio`` of ``total_steps``
    rounded up (as Hugging Face does); the contract allows only one of them to be set."""
    if spec.warmup_ratio > 0:
        return math.ceil(spec.warmup_ratio * total_steps)
    return spec.warmup_steps


def lr_at(step: int, spec: TrainingSpec, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    warmup = warmup_steps(spec, total_steps)
    if step < warmup:
        return spec.learning_rate * (step + 1) / (warmup + 1)
    if spec.schedule == "constant":
        return spec.learning_rate
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if spec.schedule == "linear":
        weight = 1.0 - progress
    else:
        weight = 0.5 * (1.0 + math.cos(math.pi * progress))
    return spec.min_lr + weight * (spec.learning_rate - spec.min_lr)
