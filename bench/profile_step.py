"""Where a small model's CPU training step goes: the profile behind the README's performance
notes, for nanoGPT's reference architecture and the gpt2 and llama backends, before and after.

    .venv/bin/python bench/profile_step.py [--threads 1] [--rounds 60]

Models are the shapes of ``bench/reference_gpt.py`` (4 layers, 4 heads, width 128, block 64,
batch 12, vocabulary 65, random tokens). Variants:

* ``reference``: nanoGPT's architecture and its CPU optimizer (torch's per-parameter AdamW);
* ``reference_fused``: the same with fused AdamW, the trainer's optimizer;
* ``gpt2_stock``: the gpt2 backend as it was: ``GPT2LMHeadModel.forward``, GPT-2's tanh GELU
  (``gelu_new``), per-parameter AdamW;
* ``gpt2``: the gpt2 backend now: lean forward, exact GELU, fused AdamW;
* ``llama_stock``: ``LlamaForCausalLM.forward`` on the llama backend's model, fused AdamW;
* ``llama``: the llama backend now (lean forward), fused AdamW.

For each: aten ops per step and their summed time per step (torch profiler, 10 steps), the
five costliest ops, and the process CPU time per step (median over ``--rounds`` rounds that
interleave one step of every variant, so a busy machine slows all alike; ``ratio`` is the
reference's median over each variant's, per round). Progress to stderr; the last stdout line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from model_trainer.engine.backends.gpt2 import Gpt2Net
from model_trainer.engine.backends.llama import LlamaNet
from model_trainer_contracts import Gpt2Model, LlamaModel
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_gpt import BATCH, BLOCK, LLAMA, ReferenceGpt, train_step

VOCAB = 65


class HfForward(nn.Module):
    """A backend net run through transformers' own forward instead of the lean one."""

    def __init__(self, net: Gpt2Net | LlamaNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net.hf(input_ids=x, use_cache=False).logits
        return logits


def _gpt2(activation: str) -> Gpt2Net:
    return Gpt2Net(Gpt2Model(n_layer=4, n_head=4, n_embd=128, block_size=BLOCK), VOCAB, activation)


def _llama() -> LlamaNet:
    return LlamaNet(LlamaModel.model_validate(LLAMA), VOCAB)


VARIANTS: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "reference": (lambda: ReferenceGpt(VOCAB, BLOCK, 4, 4, 128), False),
    "reference_fused": (lambda: ReferenceGpt(VOCAB, BLOCK, 4, 4, 128), True),
    "gpt2_stock": (lambda: HfForward(_gpt2("gelu_new")), False),
    "gpt2": (lambda: _gpt2("gelu"), True),
    "llama_stock": (lambda: HfForward(_llama()), True),
    "llama": (_llama, True),
}


@dataclass
class Trainee:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: Tensor

    def step(self, i: int) -> None:
        window = self.data[i % len(self.data)]
        x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
        train_step(self.model, self.optimizer, x, y)


def trainee(name: str) -> Trainee:
    build, fused = VARIANTS[name]
    torch.manual_seed(0)
    model = build()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), fused=True if fused else None)
    data = torch.randint(VOCAB, (32, BATCH, BLOCK + 1))
    return Trainee(model, optimizer, data)


def op_profile(t: Trainee, steps: int = 10) -> dict[str, object]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            t.step(i)
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    ops.sort(key=lambda e: -e.self_cpu_time_total)
    return {
        "aten_ops_per_step": round(sum(e.count for e in ops) / steps),
        "aten_ms_per_step": round(sum(e.self_cpu_time_total for e in ops) / steps / 1000, 2),
        "top_ops_ms_per_step": {
            e.key: round(e.self_cpu_time_total / steps / 1000, 2) for e in ops[:5]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trainees = {name: trainee(name) for name in args.variants}
    for t in trainees.values():
        for i in range(5):
            t.step(i)
    cpu: dict[str, list[float]] = {name: [] for name in trainees}
    for r in range(args.rounds):
        order = list(trainees) if r % 2 == 0 else list(trainees)[::-1]
        for name in order:
            started = time.process_time()
            trainees[name].step(r)
            cpu[name].append(time.process_time() - started)
        if (r + 1) % 20 == 0:
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    base = cpu[args.variants[0]]
    figures: dict[str, object] = {"threads": args.threads, "rounds": args.rounds}
    for name, t in trainees.items():
        print(f"profiling {name}", file=sys.stderr)
        figures[name] = {
            "cpu_ms_per_step": round(statistics.median(cpu[name]) * 1000, 1),
            "ratio": round(
                statistics.median(b / c for b, c in zip(base, cpu[name], strict=True)), 3
            ),
            **op_profile(t),
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
