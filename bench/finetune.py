"""LoRA against full fine-tuning, and ours against the Hugging Face Trainer with peft.

    .venv/bin/python bench/finetune.py [--steps 30] [--batch 8] [--block 256]

A random 4-layer, 256-wide Llama (a byte-level BPE of 1024 tokens trained on the demo's
Shakespeare sample, the demo's chat template) is saved as a local model folder; the demo's
chat records (``deploy/demo/chat.jsonl``, repeated to fill the runs) are its data. Each run is
a subprocess of its own, so its peak RSS is its own:

* ``ours_lora``: ``run_job``, adapter r=16 on q_proj and v_proj (peft's default), packed chat
  examples, the prompt masked;
* ``ours_full``: the same job without the adapter (every weight trains);
* ``hf_lora``: ``transformers.Trainer`` over the same peft model and the same packed rows
  (position ids restarting per example, labels masked alike), AdamW, the same batch.

Tokens/s counts every position of every row trained (batch x block per step), after the first
``--warmup`` steps (runs alternate ``--rounds`` times, the best of each counts): ours from its
progress events (which leave evaluation out), the Trainer's
from a callback's clock at each step's end. The last stdout line is one JSON object with the
figures, ``ratio_ours_over_hf`` (the goal is >= 1.0), ``lora_over_full`` and the packing
efficiency of the demo chat data at the block size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "deploy" / "demo"
sys.path.insert(0, str(ROOT / "deploy"))

from demo_chat_model import build_chat_model  # noqa: E402
from model_trainer.engine import RunContext, run_job  # noqa: E402
from model_trainer.engine.packing import IGNORE, pack  # noqa: E402
from model_trainer.engine.records import read_examples  # noqa: E402
from model_trainer_contracts import ConfigEventV1, DataSpec, ProgressEventV1, SubmitJobV1  # noqa: E402

RANK, ALPHA = 16, 32
LORA = {"kind": "lora", "r": RANK, "alpha": ALPHA, "dropout": 0.0}
LR = 1e-3
THREADS = 2


def job(mode: str, steps: int, batch: int, block: int) -> SubmitJobV1:
    spec: dict[str, object] = {
        "job_id": mode.replace("_", "-"),
        "user_id": 0,
        "backend": "pretrained",
        "model": {"path": "models/base", "block_size": block},
        "data": {"corpus_path": "chat.jsonl", "format": "chat", "test_fraction": 0.0},
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "learning_rate": LR,
            "schedule": "constant",
            "eval_every": steps,
            "eval_batches": 1,
            "grad_clip": 1.0,
            "device": "cpu",
        },
        "progress": {"every_steps": 1},
    }
    if mode == "ours_lora":
        spec["adapter"] = LORA
    return SubmitJobV1.model_validate(spec)


def run_ours(root: Path, mode: str, steps: int, batch: int, block: int, warmup: int) -> float:
    events: list[ConfigEventV1 | ProgressEventV1] = []
    spec = job(mode, steps, batch, block)
    shutil.rmtree(root / "artifacts" / spec.job_id, ignore_errors=True)  # an earlier round's
    ctx = RunContext(
        job=spec,
        data_root=root / "data",
        artifacts_root=root / "artifacts",
        threads=THREADS,
        checkpoint_every=10**6,
        emit=events.append,
    )
    run_job(ctx)
    rates = [e.tokens_per_sec for e in events if isinstance(e, ProgressEventV1) and e.step > warmup]
    # every event covers one step: the mean of rates weights steps by tokens, not by time
    return len(rates) / sum(1 / r for r in rates)


def run_hf(root: Path, steps: int, batch: int, block: int, warmup: int) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    torch.set_num_threads(THREADS)
    torch.manual_seed(1337)
    folder = root / "data" / "models" / "base"
    spec = DataSpec.model_validate({"corpus_path": "chat.jsonl", "format": "chat"})
    rows = pack(list(read_examples(spec, root / "data", folder)), block)
    # Trainer's models shift labels themselves: label t+1 is what position t predicts.
    labels = np.concatenate([np.full((len(rows.inputs), 1), IGNORE), rows.targets[:, :-1]], 1)
    data = [
        {
            "input_ids": torch.from_numpy(rows.inputs[i]),
            "labels": torch.from_numpy(labels[i]),
            "position_ids": torch.from_numpy(rows.positions[i]),
        }
        for i in range(len(rows.inputs))
    ]
    base = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    base.config.use_cache = False
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    ends: list[float] = []

    def on_step_end(*args: object, **kwargs: object) -> None:
        ends.append(time.perf_counter())

    # built with type(): transformers is untyped here, and a class statement would subclass Any
    clock = type("Clock", (TrainerCallback,), {"on_step_end": on_step_end})

    args = TrainingArguments(
        output_dir=str(root / "hf"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=1337,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[clock()]).train()
    return (len(ends) - 1 - warmup) * batch * block / (ends[-1] - ends[warmup])


def child(args: argparse.Namespace) -> None:
    root = Path(args.root)
    if args.child == "hf_lora":
        rate = run_hf(root, args.steps, args.batch, args.block, args.warmup)
    else:
        rate = run_ours(root, args.child, args.steps, args.batch, args.block, args.warmup)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens_per_s": rate, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20, help="copies of the demo chat data")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["ours_lora", "ours_full", "hf_lora"])
    parser.add_argument("--root")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        folder = build_chat_model(data / "models" / "base", layers=4, width=256, positions=1024)
        print(f"model folder {folder}", file=sys.stderr)
        records = (DEMO / "chat.jsonl").read_text()
        (data / "chat.jsonl").write_text(records * args.repeat)
        (data / "once.jsonl").write_text(records)
        once = DataSpec.model_validate({"corpus_path": "once.jsonl", "format": "chat"})
        demo_rows = pack(list(read_examples(once, data, folder)), args.block)
        results: dict[str, object] = {
            "steps": args.steps,
            "batch": args.batch,
            "block": args.block,
            "threads": THREADS,
            "demo_chat_packing_efficiency": round(demo_rows.efficiency, 4),
            "demo_chat_rows": len(demo_rows.inputs),
        }
        rate: dict[str, float] = {}
        peak: dict[str, float] = {}
        for _ in range(args.rounds):  # alternating; the best of each filters others' load out
            for mode in ("ours_lora", "hf_lora", "ours_full"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--root", str(root)]
                    + [f"--{k}={getattr(args, k)}" for k in ("steps", "batch", "block", "warmup")],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                print(mode, figures, file=sys.stderr)
                rate[mode] = max(rate.get(mode, 0.0), float(figures["tokens_per_s"]))
                peak[mode] = max(peak.get(mode, 0.0), float(figures["peak_rss_mb"]))
        for mode in rate:
            results[mode] = {"tokens_per_s": round(rate[mode], 1), "peak_rss_mb": round(peak[mode])}
        results["ratio_ours_over_hf"] = round(rate["ours_lora"] / rate["hf_lora"], 3)
        results["lora_over_full_tokens_per_s"] = round(rate["ours_lora"] / rate["ours_full"], 3)
        print(json.dumps(results))


if __name__ == "__main__":
    main()
