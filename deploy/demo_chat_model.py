"""A small local chat model folder for the demo's fine-tuning job (no model hub is reachable
from a fresh machine): a Llama of the given shape, a byte-level BPE trained on the demo's
Shakespeare sample and chat records, and a ChatML-like chat template in its tokenizer config.

    .venv/bin/python deploy/demo_chat_model.py <folder>

Its weights come from a short full training on the Shakespeare sample (``--pretrain-steps``),
so that the LoRA job starts from a model that already writes English-like text.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from model_trainer.engine.tokenizer import train_bpe
from transformers import LlamaConfig, LlamaForCausalLM

DEMO = Path(__file__).resolve().parent / "demo"
EOT = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}" + EOT + "\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_chat_model(
    folder: Path, *, layers: int, width: int, positions: int, pretrain_steps: int = 0
) -> Path:
    """Write the folder; returns it."""
    text = (DEMO / "shakespeare-sample.txt").read_text(encoding="utf-8")
    chats = (DEMO / "chat.jsonl").read_text(encoding="utf-8")
    tokenizer = train_bpe(text + chats, 1024, 2)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=width,
            intermediate_size=-(-8 * width // (3 * 64)) * 64,
            num_hidden_layers=layers,
            num_attention_heads=max(1, width // 64),
            max_position_embeddings=positions,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.encode(EOT).tolist()[0],
        )
    )
    if pretrain_steps:
        ids = torch.from_numpy(tokenizer.encode(text).astype("int64"))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(pretrain_steps):
            starts = torch.randint(len(ids) - 65, (16,), generator=gen)
            window = torch.stack([ids[s : s + 65] for s in starts.tolist()])
            logits = model(input_ids=window[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), window[:, 1:].reshape(-1))
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
    model.save_pretrained(str(folder))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--pretrain-steps", type=int, default=200)
    args = parser.parse_args()
    build_chat_model(
        args.folder,
        layers=args.layers,
        width=args.width,
        positions=512,
        pretrain_steps=args.pretrain_steps,
    )


if __name__ == "__main__":
    main()
