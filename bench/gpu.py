"""GPU throughput: a GPT-2-small-shaped model and a Llama of similar size on one CUDA device,
bf16 against fp32, through run_job (compile auto, fused AdamW, TF32, pinned batches).

    .venv/bin/python bench/gpu.py /work/shared/data/tinyshakespeare.txt [--steps 300]

Models: ``gpt2`` 12 layers x 768 wide, 12 heads, block 1024 (GPT-2 small's shape); ``llama``
12 layers x 768, 12 heads, SwiGLU 2048, block 1024, tied embeddings (the same parameter count
within 1%). Tokens: byte-level BPE trained on the corpus (``--vocab``, default 8192; a
50,257-token vocabulary cannot be learnt from 1 MB, so the embedding is smaller than GPT-2's
and the model has about 91M parameters instead of 124M; MFU counts the FLOPs either way).

For each model and precision: steady tokens/s (median of the progress intervals after the
first, which holds the compilation), the time to the first progress event (compilation and
warm-up), MFU by nanoGPT's convention (6N + 12·L·H·Q·T FLOPs per token over the device's dense
bf16 peak; fp32 runs are measured against the same peak), and peak allocated GPU memory.

Progress goes to stderr; the last stdout line is one JSON object. Without CUDA it fails at
once: exit status 2 and ``{"error": ...}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from model_trainer.engine import RunContext, run_job
from model_trainer.logs import configure_logging
from model_trainer_contracts import ConfigEventV1, ProgressEventV1, SubmitJobV1

MODELS: dict[str, dict[str, object]] = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "dropout": 0.0},
    "llama": {
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_size": 768,
        "intermediate_size": 2048,
        "block_size": 1024,
        "tie_word_embeddings": True,
    },
}


def make_job(backend: str, precision: str, corpus: Path, args: argparse.Namespace) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": f"gpu-bench-{backend}-{precision}",
            "user_id": 0,
            "backend": backend,
            "model": MODELS[backend],
            "tokenizer": {"kind": "bpe", "vocab_size": args.vocab},
            "data": {"corpus_path": corpus.name, "val_fraction": 0.1},
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": 6e-4,
                "warmup_steps": 50,
                "min_lr": 6e-5,
                "weight_decay": 0.1,
                "betas": [0.9, 0.95],
                "device": "cuda",
                "precision": precision,
                "compile": args.compile,
                "eval_every": 10**6,  # only at the end
                "eval_batches": 5,
            },
            "progress": {"every_steps": args.every},
        }
    )


def one_run(
    backend: str, precision: str, corpus: Path, out: Path, args: argparse.Namespace
) -> dict[str, object]:
    rates: list[float] = []
    mfus: list[float] = []
    marks: dict[str, float] = {}
    params: list[int] = []

    def emit(event: ConfigEventV1 | ProgressEventV1) -> None:
        if isinstance(event, ConfigEventV1):
            marks["config"] = time.monotonic()
            params.append(event.num_parameters)
            return
        marks.setdefault("first_progress", time.monotonic())
        rates.append(event.tokens_per_sec)
        if event.mfu is not None:
            mfus.append(event.mfu)
        print(
            f"{backend} {precision} step {event.step}/{event.total_steps} "
            f"loss {event.train_loss:.3f} {event.tokens_per_sec:,.0f} tok/s mfu {event.mfu}",
            file=sys.stderr,
        )

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    ctx = RunContext(
        job=make_job(backend, precision, corpus, args),
        data_root=corpus.parent,
        artifacts_root=out,
        threads=args.threads,
        checkpoint_every=10**9,
        emit=emit,
    )
    run_job(ctx)
    steady = rates[1:] or rates
    steady_mfu = mfus[1:] or mfus
    return {
        "parameters": params[0] if params else None,
        "tokens_per_sec": round(statistics.median(steady), 1),
        "mfu": round(statistics.median(steady_mfu), 4) if steady_mfu else None,
        "first_interval_s": round(marks["first_progress"] - marks["config"], 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main() -> None:
    configure_logging("warning", "console")  # logs to stderr: stdout ends with the figures
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, help="tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25, help="steps per progress interval")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--backends", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        message = "bench/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False here"
        print(message, file=sys.stderr)
        print(json.dumps({"error": message}))
        sys.exit(2)
    corpus: Path = args.corpus.resolve()
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    figures: dict[str, object] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens_per_step": args.batch_size * 1024,
        "compile": args.compile,
    }
    for backend in args.backends:
        for precision in args.precisions:
            figures[f"{backend}_{precision}"] = one_run(backend, precision, corpus, out, args)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
