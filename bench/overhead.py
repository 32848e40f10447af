"""BaseTrainer's overhead against a bare hand-written torch loop, per backend.

    .venv/bin/python bench/overhead.py /work/shared/data/tinyshakespeare.txt

For each backend the same model (same seed, same initial weights) is trained on the same
batches for ``--steps`` steps and then evaluated once on the same ``--eval-batches`` batches,
twice: through ``run_job`` (progress events every 10 steps, stop checks every step) and
through a bare loop (batch, forward, cross-entropy, backward, clip, fused AdamW step as the
trainer's, lr set by hand). Each is timed from its first step to its last loss, evaluation
included. Runs alternate, ``--rounds`` times, and the best of each counts, which filters out
noise from other processes. The bare loop's losses are checked against the trainer's to prove
the work is the same.

Progress goes to stderr; the last stdout line is one JSON object with ratio_<backend>
(trainer tokens/s over bare tokens/s; the target is >= 0.95) and the tokens/s figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from model_trainer.engine import RunContext, create_backend, run_job
from model_trainer.engine.dataset import batch, derive_seed
from model_trainer.engine.optim import lr_at
from model_trainer.engine.prepare import prepare_data
from model_trainer.logs import configure_logging
from model_trainer_contracts import ConfigEventV1, ProgressEventV1, SubmitJobV1

MODELS: dict[str, dict[str, object]] = {
    "char_lstm": {"embedding_dim": 64, "hidden_size": 256, "num_layers": 2, "block_size": 64},
    "gpt2": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64},
}


def make_job(backend: str, job_id: str, corpus: Path, steps: int, eval_batches: int) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": job_id,
            "user_id": 0,
            "backend": backend,
            "model": MODELS[backend],
            "tokenizer": {"kind": "char"},
            "data": {"corpus_path": corpus.name},
            "training": {
                "max_steps": steps,
                "batch_size": 12,
                "learning_rate": 1e-3,
                "warmup_steps": 10,
                "min_lr": 1e-4,
                "betas": [0.9, 0.99],
                "weight_decay": 0.1,
                "grad_clip": 1.0,
                "eval_every": steps,
                "eval_batches": eval_batches,
                "device": "cpu",
            },
            "progress": {"every_steps": 10},
        }
    )


def context(job: SubmitJobV1, corpus: Path, out: Path, threads: int) -> RunContext:
    return RunContext(
        job=job,
        data_root=corpus.parent,
        artifacts_root=out,
        threads=threads,
        checkpoint_every=10**9,
    )


def through_trainer(ctx: RunContext) -> tuple[float, list[float]]:
    """Seconds from the first step to the last event, and the logged mean losses."""
    marks: list[float] = []
    logged: list[float] = []

    def emit(event: ConfigEventV1 | ProgressEventV1) -> None:
        marks.append(time.perf_counter())
        if isinstance(event, ProgressEventV1):
            logged.append(event.train_loss)

    ctx.emit = emit
    run_job(ctx)
    return marks[-1] - marks[0], logged


def bare_loop(ctx: RunContext) -> tuple[float, list[float]]:
    """The same training, hand-written: seconds and mean losses per 10 steps."""
    job, tr = ctx.job, ctx.job.training
    backend = create_backend(job.backend)
    ctx_len = backend.context_length(job.model)
    tokenizer, splits = prepare_data(ctx, backend, ctx_len)  # the trainer's cached tokens
    torch.set_num_threads(ctx.threads)
    torch.manual_seed(tr.seed)
    model = backend.build(job.model, tokenizer.vocab_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(  # fused, as the trainer's: the loops differ in nothing else
        [{"params": decay, "weight_decay": tr.weight_decay}, {"params": other, "weight_decay": 0}],
        lr=tr.learning_rate,
        betas=tr.betas,
        fused=True,
    )
    steps = tr.max_steps or 0
    losses: list[float] = []
    window: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tr, steps)
        x, y = batch(splits.train, ctx_len, tr.batch_size, derive_seed(tr.seed, "train", step, 0))
        logits: torch.Tensor = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip or math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == steps:
            losses.append(sum(window) / len(window))
            window = []
    model.eval()
    with torch.no_grad():
        total = 0.0
        for i in range(tr.eval_batches):
            seed = derive_seed(tr.seed, "val", steps, i)
            x, y = batch(splits.val, ctx_len, tr.batch_size, seed)
            out: torch.Tensor = model(x)
            total += F.cross_entropy(out.view(-1, out.size(-1)), y.view(-1)).item()
    return time.perf_counter() - start, losses


def main() -> None:
    configure_logging("warning", "console")  # logs to stderr: stdout ends with the figures
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-batches", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backends", nargs="+", default=["char_lstm", "gpt2"])
    args = parser.parse_args()
    corpus: Path = args.corpus.resolve()
    out = Path(tempfile.mkdtemp(prefix="overhead-"))
    best: dict[str, dict[str, float]] = {b: {"trainer": 0.0, "bare": 0.0} for b in args.backends}
    for rnd in range(args.rounds):
        for backend in args.backends:
            job = make_job(backend, f"{backend}-{rnd}", corpus, args.steps, args.eval_batches)
            tokens = args.steps * 12 * create_backend(backend).context_length(job.model)
            order = ["trainer", "bare"] if rnd % 2 == 0 else ["bare", "trainer"]
            results: dict[str, list[float]] = {}
            for kind in order:
                ctx = context(job, corpus, out, args.threads)
                seconds, losses = (through_trainer if kind == "trainer" else bare_loop)(ctx)
                results[kind] = losses
                rate = tokens / seconds
                best[backend][kind] = max(best[backend][kind], rate)
                print(
                    f"round {rnd + 1}/{args.rounds} {backend:9s} {kind:7s} "
                    f"{rate:9.0f} tok/s ({seconds:.2f}s)",
                    file=sys.stderr,
                )
            if results["trainer"] != results["bare"]:
                print(f"warning: {backend} losses differ between the loops", file=sys.stderr)
    summary: dict[str, float | int] = {"steps": args.steps, "threads": args.threads}
    for backend, rates in best.items():
        summary[f"ratio_{backend}"] = round(rates["trainer"] / rates["bare"], 4)
        summary[f"trainer_tokens_per_sec_{backend}"] = round(rates["trainer"], 1)
        summary[f"bare_tokens_per_sec_{backend}"] = round(rates["bare"], 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
