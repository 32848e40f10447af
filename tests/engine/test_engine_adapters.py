"""Fine-tuning as teams do it: LoRA adapters (peft) on tiny local Llama, Qwen2 and GPT-2
folders, chat and instruction records from JSONL and Parquet, the prompt masked from the loss,
examples packed without attention crossing them; and the typed refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from model_trainer.core.admission import admit
from model_trainer.core.finetune import DEFAULT_TARGETS, trainable_parameters
from model_trainer.core.memory import Vocabulary, estimate
from model_trainer.engine import run_job
from model_trainer.engine.backends.pretrained import PretrainedBackend, PretrainedNet
from model_trainer.engine.packing import IGNORE, Example, pack
from model_trainer.engine.records import Record, Renderer
from model_trainer_contracts import (
    ConfigEventV1,
    DataSpec,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
)
from peft import PeftModel
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tests.engine.engine_helpers import Env, Event, checkpoint_file, losses
from tests.engine.finetune_helpers import (
    chat_folder,
    conversations,
    instructions,
    write_jsonl,
    write_parquet,
)

C = ModelTrainerErrorCode
LOGIT_TOLERANCE = 1e-5  # merged vs adapter: the same sums in another order, fp32
LORA = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
GENERATE = {"prompts": 2, "max_new_tokens": 8}


def _chat_job(env: Env, **extra: object) -> SubmitJobV1:
    spec = env.job(
        "pretrained",
        model={"block_size": 128},
        data={"corpus_path": write_jsonl(env, "chat.jsonl", conversations()), "format": "chat"},
        training={"max_steps": 6, "learning_rate": 1e-2, "eval_every": 3},
    ).model_dump(mode="json")
    return SubmitJobV1.model_validate({**spec, "adapter": LORA, **extra})


def _trained(env: Env, job: SubmitJobV1, source: Path) -> PretrainedNet:
    """The network the run ended with: the base folder, the adapter, the final checkpoint."""
    backend = PretrainedBackend()
    model = backend.create(job.model, 300, env.data_root)
    assert job.adapter is not None
    net = backend.attach_adapter(model, job.adapter)
    state: object = torch.load(checkpoint_file(env.artifacts_root / job.job_id), weights_only=True)
    assert isinstance(state, dict)
    assert isinstance(net, PretrainedNet)
    missing, unexpected = net.load_state_dict(state["model"], strict=False)
    assert unexpected == []
    assert all("lora_" not in k for k in missing)
    return net.eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_lora_on_chat_data_gives_an_adapter_and_a_merged_model(env: Env, arch: str) -> None:
    source = chat_folder(env, arch)
    job = _chat_job(env, adapter={**LORA, "merge": True}, generate=GENERATE)
    events: list[Event] = []
    done = run_job(env.ctx(job, events))
    logged = losses(events)
    assert logged[6] < logged[1]
    config = events[0]
    assert isinstance(config, ConfigEventV1)
    assert config.loss_tokens is not None
    assert 0 < config.loss_tokens < config.train_tokens
    assert config.packing_efficiency is not None
    assert config.packing_efficiency > 0.8

    folder = Path(done.artifact_path)
    assert (folder / "adapter_model.safetensors").is_file()
    assert (folder / "adapter_config.json").is_file()
    assert not (folder / "model.safetensors").exists()
    adapter = load_file(str(folder / "adapter_model.safetensors"))
    assert adapter
    assert all("lora_" in k for k in adapter)

    # Only the adapter trains: the checkpoint holds it and the optimizer's state of it alone.
    state: object = torch.load(checkpoint_file(folder), weights_only=True)
    assert isinstance(state, dict)
    trained = sorted(k for k in state["model"] if "lora_" in k)
    buffers = [k for k in state["model"] if "lora_" not in k]
    assert trained
    assert all(k.endswith("_freq") for k in buffers), buffers  # rotary tables
    assert len(state["optimizer"]["state"]) == len(trained)

    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 8, 61]])
    with torch.no_grad():
        net = _trained(env, job, source)
        ours = net(ids)
        base = AutoModelForCausalLM.from_pretrained(str(source))
        with_adapter = PeftModel.from_pretrained(base, str(folder))(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(folder / "merged"))
        merged_logits = merged(input_ids=ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(str(source))(input_ids=ids).logits
    assert torch.allclose(with_adapter, ours, atol=LOGIT_TOLERANCE, rtol=0)
    assert torch.allclose(merged_logits, ours, atol=LOGIT_TOLERANCE, rtol=0)
    assert not torch.allclose(untouched, ours, atol=1e-3)  # the adapter did change the model

    # The held-out prompts: the test split's records (the last 2 of 40), answered greedily.
    tok = AutoTokenizer.from_pretrained(str(source))
    # records 38 and 39 end with the answers to questions 3 and 4 (see conversations())
    assert [g.reference for g in done.generations] == [
        "The wind is kind if the sea is calm.",
        "She said that we shall see the sea.",
    ]
    for generation in done.generations:
        assert generation.prompt.endswith("<|im_start|>assistant\n")
        assert generation.completion == _greedy(net, tok, generation.prompt, 8)


def _greedy(net: PretrainedNet, tok: PreTrainedTokenizerBase, prompt: str, most: int) -> str:
    """Greedy decoding the plain way: the whole sequence again for every token."""
    ids: list[int] = tok(prompt, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(most):
            nxt = int(net(torch.tensor([ids + new]))[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return str(tok.decode(new))


def test_generate_is_bounded_and_asks_for_records(env: Env) -> None:
    chat = _chat_job(env).model_dump(mode="json")
    for bad in ({"prompts": 17}, {"prompts": 0}, {"max_new_tokens": 257}):
        with pytest.raises(ValidationError):
            SubmitJobV1.model_validate({**chat, "generate": bad})
    text = env.job("pretrained").model_dump(mode="json")
    with pytest.raises(ValidationError, match="generate needs chat or instruction data"):
        SubmitJobV1.model_validate({**text, "generate": GENERATE})


def test_instruction_records_from_parquet_train_the_response(env: Env) -> None:
    chat_folder(env, "llama", template=False)  # the plain prompt/response rendering
    name = write_parquet(env, "train.parquet", instructions())
    data = {
        "corpus_path": name,
        "format": "instruction",
        "records": {"prompt_field": "question", "response_field": "answer"},
    }
    job = env.job("pretrained", model={"block_size": 32}, data=data)
    job = job.model_copy(update={"adapter": _adapter()})
    events: list[Event] = []
    done = run_job(env.ctx(job, events))
    assert done.steps == 8
    config = events[0]
    assert isinstance(config, ConfigEventV1)
    assert config.loss_tokens is not None
    assert config.loss_tokens < config.train_tokens


def _adapter() -> object:
    return SubmitJobV1.model_validate(
        {
            "job_id": "x",
            "user_id": 1,
            "backend": "pretrained",
            "model": {"path": "p"},
            "data": {"inline_text": "x"},
            "adapter": LORA,
        }
    ).adapter


def test_a_lora_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one(env: Env) -> None:
    chat_folder(env, "llama")
    job = _chat_job(env, adapter={**LORA, "dropout": 0.1})
    straight = run_job(env.ctx(job.model_copy(update={"job_id": "straight"}), []))
    resumed = job.model_copy(update={"job_id": "resumed"})
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(resumed, [], stop_at_step=3))
    assert err.value.code == C.TRAINING_CANCELLED
    events: list[Event] = []
    done = run_job(env.ctx(resumed, events, attempt=2))
    config = events[0]
    assert isinstance(config, ConfigEventV1)
    assert config.start_step == 3
    a = load_file(str(Path(straight.artifact_path) / "adapter_model.safetensors"))
    b = load_file(str(Path(done.artifact_path) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _renderer(env: Env, fmt: str = "chat", **records: object) -> Renderer:
    folder = chat_folder(env, "llama")
    spec = DataSpec.model_validate(
        {"inline_text": "{}", "format": fmt, "records": records}
        if records
        else {"inline_text": "{}", "format": fmt}
    )
    return Renderer(folder, spec)


def _example(renderer: Renderer, messages: list[dict[str, str]]) -> Example:
    return renderer.example(Record("chat.jsonl", "line", 1, {"messages": messages}))


def test_only_the_assistant_tokens_count_in_the_loss(env: Env) -> None:
    renderer = _renderer(env)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who walks to the castle?"},
        {"role": "assistant", "content": "The king."},
    ]
    ex = _example(renderer, messages)
    text = renderer.tok.decode([int(i) for i in ex.ids[ex.trainable]])
    assert text == "The king.<|endoftext|>\n"  # the answer and its end of turn, nothing else

    # Two conversations that differ only in their system and user tokens (same length).
    other = [
        {"role": "system", "content": "Be crisp."},
        {"role": "user", "content": "Who walks to the cassle!"},
        {"role": "assistant", "content": "The king."},
    ]
    changed = _example(renderer, other)
    assert len(changed.ids) == len(ex.ids)
    assert bool((changed.trainable == ex.trainable).all())
    prompt = ~ex.trainable
    assert not np.array_equal(changed.ids[prompt], ex.ids[prompt])
    assert np.array_equal(changed.ids[ex.trainable], ex.ids[ex.trainable])

    job = env.job("pretrained", model={"block_size": 128})
    net = PretrainedBackend().create(job.model, 300, env.data_root).eval()
    backend = PretrainedBackend()
    rows = pack([ex], 128)
    x, y, pos = (torch.from_numpy(a) for a in (rows.inputs, rows.targets, rows.positions))
    swapped = torch.from_numpy(pack([changed], 128).targets)
    everything = [Example(e.ids, np.ones(len(e.ids), dtype=np.bool_)) for e in (ex, changed)]
    unmasked = [torch.from_numpy(pack([e], 128).targets) for e in everything]
    with torch.no_grad():
        loss = float(backend.packed_loss(net, x, y, pos))
        # Changing only the prompt's tokens changes no target: the same loss.
        assert float(backend.packed_loss(net, x, swapped, pos)) == loss
        # With the prompt in the loss (train_on_prompt), the same change does change it.
        first, second = (float(backend.packed_loss(net, x, t, pos)) for t in unmasked)
        assert first != pytest.approx(second)
    # The gradient reaches no logit at a prompt position.
    logits = net(x, pos).detach().requires_grad_(True)
    flat = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    torch.autograd.backward(flat)
    assert logits.grad is not None
    masked = (y == IGNORE)[0]
    assert float(logits.grad[0, masked].abs().max()) == 0.0
    assert float(logits.grad[0, ~masked].abs().max()) > 0.0


def test_train_on_prompt_trains_every_token(env: Env) -> None:
    renderer = _renderer(env, train_on_prompt=True)
    ex = _example(
        renderer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    )
    assert bool(ex.trainable.all())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_packed_examples_never_attend_to_each_other(env: Env, arch: str) -> None:
    chat_folder(env, arch)
    job = env.job("pretrained", model={"block_size": 32})
    net = PretrainedBackend().create(job.model, 300, env.data_root).eval()
    rng = np.random.default_rng(0)
    first = rng.integers(1, 290, 12)
    second = rng.integers(1, 290, 14)
    third = rng.integers(1, 290, 5)

    def logits(middle: npt.NDArray[np.int64]) -> torch.Tensor:
        examples = [
            Example(ids, np.ones(len(ids), dtype=np.bool_)) for ids in (first, middle, third)
        ]
        rows = pack(examples, 32)
        assert len(rows.inputs) == 1
        assert rows.efficiency == (11 + len(middle) - 1 + 4) / 32
        with torch.no_grad():
            out: torch.Tensor = net(torch.from_numpy(rows.inputs), torch.from_numpy(rows.positions))
        return out

    base = logits(second)
    perturbed = logits(rng.integers(1, 290, 14))
    # one row, in record order: 11 positions of the first, 13 of the middle one, 4 of the third
    assert torch.equal(base[0, :11], perturbed[0, :11])  # the neighbours, bit for bit
    assert torch.equal(base[0, 24:28], perturbed[0, 24:28])
    assert not torch.allclose(base[0, 11:24], perturbed[0, 11:24])


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (None, "no 'messages' list"),
        (
            [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}],
            "cannot render",
        ),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}],
            "empty assistant",
        ),
        ([{"role": "user", "content": "x"}], "no assistant turn"),
        ([{"role": "user"}, {"role": "assistant", "content": "y"}], "no string role and content"),
    ],
)
def test_bad_chat_records_fail_with_their_line(env: Env, messages: object, reason: str) -> None:
    chat_folder(env, "llama")
    records: list[dict[str, object]] = [*conversations(5)]
    records.insert(3, {"text": "hi"} if messages is None else {"messages": messages})
    job = env.job(
        "pretrained",
        model={"block_size": 128},
        data={"corpus_path": write_jsonl(env, "bad.jsonl", records), "format": "chat"},
    )
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, []))
    assert err.value.code == C.CORPUS_MALFORMED_RECORD
    assert err.value.details["file"] == "bad.jsonl"
    assert err.value.details["line"] == 4
    assert reason in str(err.value.details["reason"])
    assert err.value.stage == "prepare"


def test_an_instruction_without_a_response_fails_with_its_line(env: Env) -> None:
    chat_folder(env, "llama")
    records: list[dict[str, object]] = [*instructions(6), {"question": "Who?", "answer": "  "}]
    data = {
        "corpus_path": write_jsonl(env, "qa.jsonl", records),
        "format": "instruction",
        "records": {"prompt_field": "question", "response_field": "answer"},
    }
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(env.job("pretrained", data=data), []))
    assert err.value.code == C.CORPUS_MALFORMED_RECORD
    assert err.value.details == {"file": "qa.jsonl", "line": 7, "reason": "empty response"}


def test_a_parquet_file_without_the_named_column_fails(env: Env) -> None:
    chat_folder(env, "llama")
    name = write_parquet(env, "shard.parquet", instructions(10))
    job = env.job(
        "pretrained", data={"corpus_path": name, "format": "instruction"}
    )  # default fields prompt/response: the file has question/answer
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, []))
    assert err.value.code == C.CORPUS_MALFORMED_RECORD
    assert err.value.details == {
        "file": "shard.parquet",
        "column": "prompt",
        "reason": "no such column",
    }


def test_text_from_a_folder_of_parquet_shards(env: Env) -> None:
    shards = env.data_root / "shards"
    shards.mkdir()
    lines = [{"body": line} for line in (env.data_root / "corpus.txt").read_text().splitlines()]
    write_parquet(env, "shards/part-0.parquet", lines[: len(lines) // 2])
    write_parquet(env, "shards/part-1.parquet", lines[len(lines) // 2 :])
    job = env.job(
        "char_lstm", data={"corpus_path": "shards", "format": "jsonl", "jsonl_field": "body"}
    )
    events: list[Event] = []
    run_job(env.ctx(job, events))
    config = events[0]
    assert isinstance(config, ConfigEventV1)
    text = env.job("char_lstm")
    reference: list[Event] = []
    run_job(env.ctx(text.model_copy(update={"job_id": "text"}), reference))
    assert isinstance(reference[0], ConfigEventV1)
    assert config.train_tokens == reference[0].train_tokens  # the same text, line for line


def test_refusals_at_acceptance(env: Env) -> None:
    chat_folder(env, "llama", template=False)
    chat = env.job("pretrained", data={"corpus_path": "corpus.txt", "format": "chat"})
    with pytest.raises(ModelTrainerError) as err:
        admit(chat, data_root=env.data_root)
    assert err.value.code == C.CHAT_TEMPLATE_NOT_FOUND
    assert err.value.details == {"path": "models/tiny"}

    spec = env.job("pretrained").model_dump(mode="json")
    qlora = SubmitJobV1.model_validate({**spec, "adapter": {"kind": "qlora"}})
    with pytest.raises(ModelTrainerError) as err:
        admit(qlora, data_root=env.data_root)
    assert err.value.code == C.UNSUPPORTED_BACKEND
    assert err.value.details["adapter"] == "qlora"

    own = env.job("gpt2").model_dump(mode="json")
    for extra in ({"adapter": LORA}, {"data": {"inline_text": "{}", "format": "chat"}}):
        with pytest.raises(ModelTrainerError) as err:
            admit(SubmitJobV1.model_validate({**own, **extra}))
        assert err.value.code == C.UNSUPPORTED_BACKEND


def test_the_memory_estimate_leaves_out_what_is_frozen(env: Env) -> None:
    chat_folder(env, "llama")
    full = env.job("pretrained")
    lora = SubmitJobV1.model_validate({**full.model_dump(mode="json"), "adapter": LORA})
    full_shape = trainable_parameters(full, env.data_root)
    lora_shape = trainable_parameters(lora, env.data_root)
    assert full_shape is not None
    assert lora_shape is not None
    (total, trains_all), (with_adapter, trains) = full_shape, lora_shape
    assert trains_all == total
    # q_proj (32x32) and v_proj (16x32, grouped-query) in 2 layers, rank 4
    assert trains == 2 * 4 * ((32 + 32) + (32 + 16))
    assert with_adapter == total + trains
    # The adapter's count is what peft adds.
    backend = PretrainedBackend()
    assert lora.adapter is not None
    net = backend.attach_adapter(backend.create(lora.model, 300, env.data_root), lora.adapter)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == trains
    vocab = Vocabulary(300, "tokenizer")
    a, b = (
        estimate(j, vocabulary=vocab, corpus_bytes=0, device="cpu", precision="fp32", pretrained=s)
        for j, s in ((full, full_shape), (lora, lora_shape))
    )
    assert (a.gradients, a.optimizer) == (4 * total, 8 * total)
    assert (b.gradients, b.optimizer) == (4 * trains, 8 * trains)
    assert b.weights == 4 * with_adapter


def test_default_targets_are_peft_s() -> None:
    for model_type, targets in DEFAULT_TARGETS.items():
        assert list(targets) == TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type]
