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


def lr_at(step: int, spec: TrainingSpec, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / (spec.warmup_steps + 1)
    if spec.schedule == "constant":
        return spec.learning_rate
    span = max(1, total_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    if spec.schedule == "linear":
        weight = 1.0 - progress
    else:
        weight = 0.5 * (1.0 + math.cos(math.pi * progress))
    return spec.min_lr + weight * (spec.learning_rate - spec.min_lr)
