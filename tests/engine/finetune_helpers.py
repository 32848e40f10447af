"""Tiny local model folders with a chat template, and chat / instruction data for them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from model_trainer.engine.tokenizer import train_bpe
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tests.engine.engine_helpers import Env, make_text

POSITIONS = 256
VOCAB = 300  # the tokenizer's


def tiny_model(arch: str, positions: int = POSITIONS) -> PreTrainedModel:
    """A tiny random causal LM (llama, qwen2, gpt_neox, else gpt2), by default with room for a
    conversation; vocabularies a little larger than the tokenizer's, as real models pad
    theirs."""
    if arch == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=320,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=positions,
            )
        )
    if arch == "qwen2":
        return Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=320,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=positions,
                tie_word_embeddings=True,
            )
        )
    if arch == "gpt_neox":
        return GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=320,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=positions,
            )
        )
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=positions, n_embd=32, n_layer=2, n_head=4)
    )


def save_tiny(
    env: Env | Path, arch: str, name: str = "tiny", *, positions: int = POSITIONS
) -> Path:
    """A tiny random ``arch`` model and a byte-level BPE tokenizer (tokenizer.json and
    tokenizer_config.json, with its end-of-text token) in ``models/<name>`` of a data root
    (an Env's, or the path given)."""
    root = env.data_root if isinstance(env, Env) else env
    folder = root / "models" / name
    torch.manual_seed(0)
    tiny_model(arch, positions).save_pretrained(str(folder))
    train_bpe(make_text(), VOCAB, 2).save_pretrained(folder)
    return folder


# ChatML-like, ending each turn with the tokenizer's end-of-text token; an unknown role is
# refused the way real templates refuse it (raise_exception).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_QUESTIONS = [
    ("Who walks to the castle?", "The king and the queen walk to the castle."),
    ("What runs over the hill?", "A fox runs over the hill."),
    ("What shall we see tomorrow?", "We shall see the sea tomorrow."),
    ("Is the wind kind?", "The wind is kind if the sea is calm."),
    ("What did she say?", "She said that we shall see the sea."),
]


def chat_folder(env: Env | Path, arch: str, name: str = "tiny", *, template: bool = True) -> Path:
    folder = save_tiny(env, arch, name)
    if template:
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] = CHAT_TEMPLATE
        config_path.write_text(json.dumps(config, indent=2))
    return folder


def conversations(n: int = 40) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    for i in range(n):
        q, a = _QUESTIONS[i % len(_QUESTIONS)]
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Answer in one sentence."})
        if i % 4 == 0:
            messages += [
                {"role": "user", "content": "And then?"},
                {"role": "assistant", "content": "Then the king said that we shall see."},
            ]
        records.append({"messages": messages})
    return records


def instructions(n: int = 40) -> list[dict[str, object]]:
    return [
        {"question": q, "answer": a} for q, a in (_QUESTIONS[i % len(_QUESTIONS)] for i in range(n))
    ]


def write_jsonl(env: Env | Path, name: str, records: Sequence[Mapping[str, object]]) -> str:
    root = env.data_root if isinstance(env, Env) else env
    (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return name


def write_parquet(env: Env, name: str, records: Sequence[Mapping[str, object]]) -> str:
    pq.write_table(pa.Table.from_pylist(records), env.data_root / name)
    return name
