"""Our backends against a minimal plain-torch GPT with nanoGPT's architecture, on nanoGPT's CPU
shakespeare-char run, in one process on the same data and the same batches.

    .venv/bin/python bench/reference_gpt.py /work/shared/data/tinyshakespeare.txt [--iters N]

The reference (written here, after nanoGPT's model.py and train.py; no code copied): token and
position embeddings, pre-LayerNorm blocks without biases, one fused q/k/v projection,
``scaled_dot_product_attention(is_causal=True)``, a 4x exact-GELU MLP, the head tied to the
token embedding, N(0, 0.02) initialisation with residual projections scaled by 1/sqrt(2L).
Trained like nanoGPT's README CPU command: n_layer 4, n_head 4, n_embd 128, block 64, batch
12, lr 1e-3 with 100 warmup steps and cosine decay to 1e-4, AdamW betas (0.9, 0.99), weight
decay 0.1 on matrices and embeddings, grad clip 1.0, dropout 0, validation loss over 20
batches every 250 steps and at the end, char tokens, 90/10 split. Its AdamW is torch's default
on CPU (a loop over parameters), as nanoGPT's is there (it asks for the fused kernel on CUDA
only); a second reference with fused AdamW, the optimizer our trainer uses, separates the
model's share of the difference from the optimizer's.

The ``gpt2`` backend (same shape) and the ``llama`` backend (same width, depth and heads; the
SwiGLU width 8/3 x 128 rounded up to 384 and two key/value heads, so its non-embedding
parameters equal the reference's: 12 x 128² per layer) train through ``run_job`` with the same
schedule, batches (the trainer's seeded sampler) and evaluation batches.

OpenMP threads that spin while they wait turn a shared machine's contention into stalls of the
whole step (a 2-thread step ran 3x slower than a 1-thread one under load here), so unless
``OMP_WAIT_POLICY`` is set the bench re-runs itself with it PASSIVE; every model gets the same.
A machine shared with other work also makes back-to-back timings unreliable, so the references are
interleaved with each backend: every 100 steps, inside the backend's progress event (which the
trainer's clock excludes), each reference runs its next 100 steps. Each ratio compares runs
that saw the same load. Throughput counts training steps only (evaluation excluded), for the
trainer from its own progress events.

Progress goes to stderr; the last stdout line is one JSON object: tokens_per_sec_* of each
model, ratio_gpt2 and ratio_llama (backend over the nanoGPT-faithful reference run beside it),
ratio_*_vs_fused (over the fused-AdamW reference), val_loss_* (the final evaluation) and
parameter counts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from model_trainer.engine import RunContext, create_backend, run_job
from model_trainer.engine.dataset import Splits, Tokens, batch, derive_seed
from model_trainer.engine.optim import lr_at
from model_trainer.engine.prepare import prepare_data
from model_trainer.logs import configure_logging
from model_trainer_contracts import ConfigEventV1, ProgressEventV1, SubmitJobV1, TrainingSpec
from torch import Tensor, nn

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
SEED = 1337
CHUNK = 100  # steps between progress events, and per reference turn
LLAMA: dict[str, object] = {
    "num_hidden_layers": N_LAYER,
    "num_attention_heads": N_HEAD,
    "num_key_value_heads": 2,
    "hidden_size": N_EMBD,
    "intermediate_size": 384,
    "block_size": BLOCK,
}
GPT2: dict[str, object] = {
    "n_layer": N_LAYER,
    "n_head": N_HEAD,
    "n_embd": N_EMBD,
    "block_size": BLOCK,
}


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.attn_proj = nn.Linear(width, width, bias=False)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.mlp_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, c))
        out: Tensor = x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x))))
        return out


class ReferenceGpt(nn.Module):
    """nanoGPT's architecture at bias=False, dropout 0."""

    def __init__(self, vocab: int, block: int, layers: int, heads: int, width: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight
        self.positions = nn.Buffer(torch.arange(block), persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, param in self.named_parameters():
            if name.endswith(("attn_proj.weight", "mlp_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx) + self.wpe(self.positions[: idx.size(1)])
        for block in self.blocks:
            x = block(x)
        logits: Tensor = self.head(self.ln_f(x))
        return logits


def training_spec(iters: int) -> dict[str, object]:
    return {
        "max_steps": iters,
        "batch_size": BATCH,
        "learning_rate": 1e-3,
        "schedule": "cosine",
        "warmup_steps": 100,
        "min_lr": 1e-4,
        "optimizer": "adamw",
        "betas": [0.9, 0.99],
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "seed": SEED,
        "device": "cpu",
        "eval_every": 250,
        "eval_batches": 20,
    }


def job(
    backend: str,
    model: Mapping[str, object],
    corpus: Path,
    iters: int,
    *,
    name: str | None = None,
    compile_: str = "auto",
) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": f"reference-bench-{name or backend}",
            "user_id": 0,
            "backend": backend,
            "model": model,
            "tokenizer": {"kind": "char"},
            "data": {"corpus_path": corpus.name, "val_fraction": 0.1},
            "training": {**training_spec(iters), "compile": compile_},
            "progress": {"every_steps": CHUNK},
        }
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> float:
    """One plain training step: cross-entropy, backward, clipping at 1.0, AdamW's step; the
    loss read back, as the trainer reads every loss."""
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
    torch.autograd.backward(loss)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


@dataclass
class Reference:
    """The reference model trained turn by turn, timing its steps only."""

    name: str
    splits: Splits
    vocab: int
    spec: TrainingSpec
    fused: bool
    step: int = 0
    train_s: float = 0.0
    first_turn_s: float | None = None
    first_turn_steps: int = 0
    val_loss: float | None = None
    model: ReferenceGpt = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        torch.manual_seed(SEED)
        self.model = ReferenceGpt(self.vocab, BLOCK, N_LAYER, N_HEAD, N_EMBD)
        params = list(self.model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            groups, lr=1e-3, betas=(0.9, 0.99), fused=True if self.fused else None
        )

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def turn(self, steps: int) -> None:
        """Train the next ``steps`` steps (evaluating where the trainer does)."""
        total = self.spec.max_steps or 0
        before = self.train_s, self.step
        for _ in range(min(steps, total - self.step)):
            started = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, self.spec, total)
            seed = derive_seed(self.spec.seed, "train", self.step, 0)
            x, y = batch(self.splits.train, BLOCK, BATCH, seed)
            train_step(self.model, self.optimizer, x, y)
            self.step += 1
            self.train_s += time.perf_counter() - started
            if self.step % self.spec.eval_every == 0 or self.step == total:
                self.val_loss = self.evaluate(self.splits.val)
        if self.first_turn_s is None:
            self.first_turn_s = self.train_s - before[0]
            self.first_turn_steps = self.step - before[1]

    @torch.no_grad()
    def evaluate(self, data: Tokens) -> float:
        self.model.eval()
        total = 0.0
        for i in range(self.spec.eval_batches):
            seed = derive_seed(self.spec.seed, "val", self.step, i)
            x, y = batch(data, BLOCK, BATCH, seed)
            logits = self.model(x)
            total += float(F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)))
        self.model.train()
        return total / self.spec.eval_batches

    def tokens_per_sec(self) -> float:
        return self.step * BATCH * BLOCK / self.train_s

    def steady_tokens_per_sec(self) -> float:
        """Without the first turn (warm-up), as for a compiled backend."""
        steps = self.step - self.first_turn_steps
        return steps * BATCH * BLOCK / (self.train_s - (self.first_turn_s or 0.0))


@dataclass
class BackendRun:
    """What the trainer reported: training seconds (from its per-event rates) and losses."""

    backend: str
    train_s: float = 0.0
    steps: int = 0
    val_loss: float | None = None
    parameters: int = 0
    intervals: list[tuple[int, float]] = field(default_factory=list)  # (steps, seconds)

    def tokens_per_sec(self) -> float:
        return self.steps * BATCH * BLOCK / self.train_s

    def steady_tokens_per_sec(self) -> float:
        """Without the first interval, which holds any compilation."""
        steady = self.intervals[1:] or self.intervals
        return sum(n for n, _ in steady) * BATCH * BLOCK / sum(s for _, s in steady)


def run_beside(
    backend: str,
    model: Mapping[str, object],
    corpus: Path,
    out: Path,
    iters: int,
    threads: int,
    companions: list[Reference],
    *,
    name: str | None = None,
    compile_: str = "auto",
) -> BackendRun:
    """Train ``backend`` through run_job; each progress event gives every companion a turn."""
    result = BackendRun(name or backend)

    def emit(event: ConfigEventV1 | ProgressEventV1) -> None:
        if isinstance(event, ConfigEventV1):
            result.parameters = event.num_parameters
            return
        done = event.step - result.steps
        seconds = done * BATCH * BLOCK / event.tokens_per_sec
        result.intervals.append((done, seconds))
        result.train_s += seconds
        result.steps = event.step
        if event.val_loss is not None:
            result.val_loss = event.val_loss
        for ref in companions:
            ref.turn(event.step - ref.step)
        rates = " ".join(f"{r.name} {r.tokens_per_sec():.0f}" for r in companions)
        print(
            f"{result.backend} step {event.step}/{iters} train {event.train_loss:.4f} "
            f"{event.tokens_per_sec:.0f} tok/s | {rates} tok/s"
            + (f" | val {event.val_loss:.4f}" if event.val_loss is not None else ""),
            file=sys.stderr,
        )

    ctx = RunContext(
        job=job(backend, model, corpus, iters, name=name, compile_=compile_),
        data_root=corpus.parent,
        artifacts_root=out,
        threads=threads,
        checkpoint_every=10**9,
        emit=emit,
    )
    run_job(ctx)
    return result


def _passive_openmp() -> None:
    """Re-run this process with OMP_WAIT_POLICY=PASSIVE unless the caller chose a policy
    (OpenMP reads it once, when torch loads it)."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> None:
    _passive_openmp()
    configure_logging("warning", "console")  # logs to stderr: stdout ends with the figures
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--llama", type=json.loads, default={}, help="llama overrides (JSON)")
    parser.add_argument("--no-fused-reference", action="store_true")
    parser.add_argument(
        "--compiled-llama",
        action="store_true",
        help="also train llama with training.compile on (needs a C++ compiler), beside "
        "another reference; reports whole-run and steady (after the first interval) rates",
    )
    args = parser.parse_args()
    corpus: Path = args.corpus.resolve()
    out = Path(tempfile.mkdtemp(prefix="reference-gpt-"))
    torch.set_num_threads(args.threads)
    llama: dict[str, object] = {**LLAMA, **args.llama}

    # The token data every run uses: the trainer's char tokenizer, split and cache.
    probe = RunContext(
        job=job("gpt2", GPT2, corpus, args.iters), data_root=corpus.parent, artifacts_root=out
    )
    tokenizer, splits = prepare_data(probe, create_backend("gpt2"), BLOCK)
    spec = TrainingSpec.model_validate(training_spec(args.iters))
    figures: dict[str, object] = {
        "iters": args.iters,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    references: dict[str, list[Reference]] = {}
    runs: dict[str, BackendRun] = {}
    for backend, model in (("gpt2", GPT2), ("llama", llama)):
        companions = [Reference("reference", splits, tokenizer.vocab_size, spec, fused=False)]
        if not args.no_fused_reference:
            companions.append(
                Reference("reference_fused", splits, tokenizer.vocab_size, spec, fused=True)
            )
        runs[backend] = run_beside(
            backend, model, corpus, out, args.iters, args.threads, companions
        )
        references[backend] = companions
    if args.compiled_llama:
        beside = [Reference("reference", splits, tokenizer.vocab_size, spec, fused=False)]
        compiled = run_beside(
            "llama",
            llama,
            corpus,
            out,
            args.iters,
            args.threads,
            beside,
            name="llama_compiled",
            compile_="on",
        )
        ref = beside[0]
        figures["tokens_per_sec_llama_compiled"] = round(compiled.tokens_per_sec(), 1)
        figures["ratio_llama_compiled"] = round(compiled.tokens_per_sec() / ref.tokens_per_sec(), 4)
        figures["ratio_llama_compiled_steady"] = round(
            compiled.steady_tokens_per_sec() / ref.steady_tokens_per_sec(), 4
        )
        first_steps, first_s = compiled.intervals[0]
        steady_step_s = 1 / (compiled.steady_tokens_per_sec() / (BATCH * BLOCK))
        figures["llama_compile_s"] = round(first_s - first_steps * steady_step_s, 1)
        figures["val_loss_llama_compiled"] = compiled.val_loss
    for backend, run in runs.items():
        mine = run.tokens_per_sec()
        figures[f"tokens_per_sec_{backend}"] = round(mine, 1)
        for ref in references[backend]:
            figures[f"tokens_per_sec_{ref.name}_beside_{backend}"] = round(ref.tokens_per_sec(), 1)
        beside = references[backend]
        figures[f"ratio_{backend}"] = round(mine / beside[0].tokens_per_sec(), 4)
        if len(beside) > 1:
            figures[f"ratio_{backend}_vs_fused"] = round(mine / beside[1].tokens_per_sec(), 4)
    first = references["gpt2"]
    figures["val_loss_reference"] = first[0].val_loss
    if len(first) > 1:
        figures["val_loss_reference_fused"] = first[1].val_loss
    for backend, run in runs.items():
        figures[f"val_loss_{backend}"] = run.val_loss
    figures["parameters_reference"] = first[0].parameters
    for backend, run in runs.items():
        figures[f"parameters_{backend}"] = run.parameters
    figures["llama"] = llama
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
