"""nanoGPT's shakespeare_char CPU reference run, through model-trainer's llama (default) or
gpt2 backend.

    .venv/bin/python bench/shakespeare_char.py /work/shared/data/tinyshakespeare.txt
    .venv/bin/python bench/shakespeare_char.py /work/shared/data/tinyshakespeare.txt --backend gpt2

Config (nanoGPT ``config/train_shakespeare_char.py`` with its README's CPU overrides): char
tokens, 4 layers, 4 heads, width 128, block 64, batch 12, 2000 iterations, lr 1e-3, warmup
100, cosine to 1e-4 over the run, AdamW betas (0.9, 0.99), weight decay 0.1, dropout 0, grad
clip 1.0, 90/10 split, evaluation over 20 random validation batches. The llama model has the
same depth, width and heads, two key/value heads and a SwiGLU width of 384, so its
non-embedding parameters equal nanoGPT's (12 x 128² per layer). nanoGPT reports a validation
loss of 1.88 (1.8857 measured); the target here is <= 1.90. The gpt2 backend, nanoGPT's
architecture plus GPT-2's biases, lands at 1.91: ``bench/reference_gpt.py`` trains nanoGPT's
exact architecture on the same batches to 1.93, so the gap to nanoGPT's 1.8857 is which
batches were drawn, not the model or the loop.

Progress goes to stderr; the last stdout line is one JSON object: val_loss (final evaluation),
tokens_per_sec (training tokens over the time from the first step to the last event,
evaluations included), wall_s (the whole run_job: tokenize, train, save), peak_rss_mb (the
process's peak resident set, which tokenizing and training set).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from model_trainer.engine import RunContext, run_job
from model_trainer.logs import configure_logging
from model_trainer_contracts import ConfigEventV1, ProgressEventV1, SubmitJobV1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_gpt import GPT2, LLAMA, training_spec  # nanoGPT's CPU config

MODELS: dict[str, dict[str, object]] = {"gpt2": GPT2, "llama": LLAMA}  # nanoGPT's shape


def job(corpus: Path, max_steps: int, backend: str) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": f"bench-shakespeare-char-{backend}",
            "user_id": 0,
            "backend": backend,
            "model": MODELS[backend],
            "tokenizer": {"kind": "char"},
            "data": {"corpus_path": corpus.name, "val_fraction": 0.1},
            "training": training_spec(max_steps),
            "progress": {"every_steps": 100},
        }
    )


def main() -> None:
    configure_logging("warning", "console")  # logs to stderr: stdout ends with the figures
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, help="tinyshakespeare.txt")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--backend", choices=sorted(MODELS), default="llama")
    parser.add_argument("--out", type=Path, help="artifacts root (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    corpus: Path = args.corpus.resolve()
    out = args.out or Path(tempfile.mkdtemp(prefix="shakespeare-char-"))
    marks: dict[str, float] = {}
    val_loss: list[float] = []
    steps: list[int] = []
    tokens_per_step = 12 * 64

    def emit(event: ConfigEventV1 | ProgressEventV1) -> None:
        now = time.monotonic()
        if isinstance(event, ConfigEventV1):
            marks["first_step"] = now
            print(
                f"config: {event.num_parameters} params, vocab {event.vocab_size}, "
                f"{event.train_tokens}/{event.val_tokens} train/val tokens, "
                f"{event.total_steps} steps on {event.device}",
                file=sys.stderr,
            )
            return
        marks["last_event"] = now
        steps.append(event.step)
        if event.val_loss is not None:
            val_loss.append(event.val_loss)
        val = f" val {event.val_loss:.4f}" if event.val_loss is not None else ""
        print(
            f"step {event.step}/{event.total_steps} train {event.train_loss:.4f}{val} "
            f"lr {event.learning_rate:.2e} {event.tokens_per_sec:.0f} tok/s "
            f"eta {event.eta_s:.0f}s",
            file=sys.stderr,
        )

    ctx = RunContext(
        job=job(corpus, args.max_steps, args.backend),
        data_root=corpus.parent,
        artifacts_root=out,
        threads=args.threads,
        checkpoint_every=10**9,
        emit=emit,
    )
    started = time.monotonic()
    completed = run_job(ctx)
    wall = time.monotonic() - started
    train_s = marks["last_event"] - marks["first_step"]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"artifact: {completed.artifact_path}", file=sys.stderr)
    result = {
        "backend": args.backend,
        "val_loss": round(val_loss[-1], 4),
        "best_val_loss": completed.best_val_loss,
        "steps": completed.steps,
        "tokens_per_sec": round(steps[-1] * tokens_per_step / train_s, 1),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "threads": args.threads,
        "target_val_loss": 1.90,
        "passed": val_loss[-1] <= 1.90,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
