"""The record reader's edge paths, in process: every bad JSONL line, Parquet file, chat or
instruction record is refused with CORPUS_MALFORMED_RECORD naming its file, line or row and
the reason; and the paths a good corpus takes (inline records, a byte-order mark, blank lines,
untemplated instructions, held-out prompts, stop ids) give what the module promises."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from model_trainer.engine.records import (
    GENERATION_CONFIG,
    Record,
    Renderer,
    held_out_prompts,
    is_parquet,
    iter_records,
    parquet_text,
    read_examples,
    records_digest,
)
from model_trainer_contracts import DataSpec, ModelTrainerError, ModelTrainerErrorCode

from tests.engine.finetune_helpers import CHAT_TEMPLATE, chat_folder, save_tiny

C = ModelTrainerErrorCode
BIG = 1 << 30


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with a templated model folder (``chat``) and a bare one (``plain``)."""
    path = tmp_path_factory.mktemp("records")
    chat_folder(path, "gpt2", "chat")
    save_tiny(path, "gpt2", "plain")
    return path


def refusal(err: pytest.ExceptionInfo[ModelTrainerError]) -> tuple[object, str, object]:
    return err.value.code, err.value.message, err.value.details


def chat(text: str) -> DataSpec:
    return DataSpec(inline_text=text, format="chat")


def instruction(text: str, *, train_on_prompt: bool = False) -> DataSpec:
    return DataSpec.model_validate(
        {
            "inline_text": text,
            "format": "instruction",
            "records": {"train_on_prompt": train_on_prompt},
        }
    )


def lines(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_inline_records_skip_blank_lines_and_a_byte_order_mark(root: Path) -> None:
    spec = DataSpec(inline_text='\ufeff{"a": 1}\n\n   \n[2]\n', format="jsonl")
    assert not is_parquet(spec, root)
    assert [(r.file, r.unit, r.number, r.value) for r in iter_records(spec, root, [])] == [
        ("<inline>", "line", 1, {"a": 1}),
        ("<inline>", "line", 4, [2]),
    ]
    # An inline corpus is digested over its text, with no size check (the spec bounds it).
    digest = records_digest(spec, root, 0)
    assert digest == records_digest(spec, root, 0)
    other = DataSpec(inline_text='{"a": 2}\n', format="jsonl")
    assert records_digest(other, root, 0) != digest


def test_a_line_that_is_not_json_is_refused_with_its_line(root: Path) -> None:
    (root / "bad.jsonl").write_text('{"a": 1}\n\n{"a": \n')
    spec = DataSpec(corpus_path="bad.jsonl", format="chat")
    with pytest.raises(ModelTrainerError) as err:
        list(iter_records(spec, root, []))
    assert refusal(err) == (
        C.CORPUS_MALFORMED_RECORD,
        "bad.jsonl line 3: not JSON: Expecting value",
        {"file": "bad.jsonl", "line": 3, "reason": "not JSON: Expecting value"},
    )


def test_a_file_named_parquet_that_is_not_parquet_is_refused_at_row_0(root: Path) -> None:
    (root / "fake.parquet").write_bytes(b'{"prompt": "not parquet"}\n')
    spec = DataSpec(corpus_path="fake.parquet", format="instruction")
    assert is_parquet(spec, root)
    with pytest.raises(ModelTrainerError) as err:
        list(iter_records(spec, root, ["prompt"]))
    code, message, details = refusal(err)
    assert code == C.CORPUS_MALFORMED_RECORD
    assert message.startswith("fake.parquet row 0: not a Parquet file: ")
    assert isinstance(details, dict)
    assert (details["file"], details["row"]) == ("fake.parquet", 0)


def test_parquet_text_ends_every_value_with_one_newline_and_refuses_a_non_string(
    root: Path,
) -> None:
    (root / "text").mkdir()
    pq.write_table(
        pa.Table.from_pylist([{"text": "one"}, {"text": "two\n"}]), root / "text/a.parquet"
    )
    spec = DataSpec(corpus_path="text", format="text")
    corpus = parquet_text(spec, root, BIG)
    assert corpus.files == [("<parquet>", b"one\ntwo\n")]
    assert corpus.digest == records_digest(spec, root, BIG)

    (root / "nums.parquet").write_bytes(b"")
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": None}]), root / "nums.parquet")
    with pytest.raises(ModelTrainerError) as err:
        parquet_text(DataSpec(corpus_path="nums.parquet", format="text"), root, BIG)
    assert refusal(err) == (
        C.CORPUS_MALFORMED_RECORD,
        "nums.parquet row 1: no string field 'text'",
        {"file": "nums.parquet", "row": 1, "reason": "no string field 'text'"},
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([1, 2], "not a JSON object"),
        ({"messages": "hello"}, "no 'messages' list of messages"),
        ({"messages": []}, "no 'messages' list of messages"),
        ({"messages": ["hi"]}, "message 0 has no string role and content"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},
            "message 1 has no string role and content",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": " "},
                ]
            },
            "message 1 is an empty assistant turn",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn to train on"),
        (
            {
                "messages": [
                    {"role": "robot", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "the chat template cannot render it: unknown role robot",
        ),
    ],
)
def test_a_bad_chat_record_is_refused_by_example_and_prompt(
    root: Path, value: object, reason: str
) -> None:
    renderer = Renderer(root / "models/chat", chat(lines(value)))
    record = Record("c.jsonl", "line", 7, value)
    for method in (renderer.example, renderer.prompt):
        with pytest.raises(ModelTrainerError) as err:
            method(record)
        assert refusal(err) == (
            C.CORPUS_MALFORMED_RECORD,
            f"c.jsonl line 7: {reason}",
            {"file": "c.jsonl", "line": 7, "reason": reason},
        )


def test_a_template_that_does_not_render_turn_by_turn_is_refused(root: Path) -> None:
    # The message count up front: the conversation up to a turn is no prefix of the whole.
    folder = chat_folder(root, "gpt2", "counting")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages | length }}" + CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    value = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    with pytest.raises(ModelTrainerError) as err:
        Renderer(folder, chat(lines(value))).example(Record("c.jsonl", "line", 1, value))
    reason = "the chat template does not render the conversation turn by turn"
    assert refusal(err) == (
        C.CORPUS_MALFORMED_RECORD,
        f"c.jsonl line 1: {reason}",
        {"file": "c.jsonl", "line": 1, "reason": reason},
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("just text", "not a JSON object"),
        ({"response": "r"}, "no string field 'prompt'"),
        ({"prompt": "p", "response": 3}, "no string field 'response'"),
        ({"prompt": "p", "response": "\n "}, "empty response"),
    ],
)
def test_a_bad_instruction_record_is_refused(root: Path, value: object, reason: str) -> None:
    renderer = Renderer(root / "models/plain", instruction(lines(value)))
    with pytest.raises(ModelTrainerError) as err:
        renderer.example(Record("i.jsonl", "line", 2, value))
    assert refusal(err) == (
        C.CORPUS_MALFORMED_RECORD,
        f"i.jsonl line 2: {reason}",
        {"file": "i.jsonl", "line": 2, "reason": reason},
    )


def test_an_untemplated_instruction_trains_the_response_and_end_of_text(root: Path) -> None:
    folder = root / "models/plain"
    value = {"prompt": "Who walks?", "response": "The king walks."}
    renderer = Renderer(folder, instruction(lines(value)))
    assert (renderer.templated, renderer.eos) == (False, "<|endoftext|>")
    example = renderer.example(Record("i.jsonl", "line", 1, value))
    tok = renderer.tok
    trained = tok.decode(example.ids[example.trainable].tolist())
    untrained = tok.decode(example.ids[~example.trainable].tolist())
    assert (untrained, trained) == ("Who walks?\n", "The king walks.<|endoftext|>")

    held = renderer.prompt(Record("i.jsonl", "line", 1, value))
    assert (held.text, held.reference) == ("Who walks?\n", "The king walks.")
    assert tok.decode(held.ids) == "Who walks?\n"

    everything = Renderer(folder, instruction(lines(value), train_on_prompt=True))
    whole = everything.example(Record("i.jsonl", "line", 1, value))
    assert whole.ids.tolist() == example.ids.tolist()
    assert whole.trainable.all()


def test_a_templated_instruction_prompt_is_the_user_turn_with_the_generation_prompt(
    root: Path,
) -> None:
    value = {"prompt": "Who walks?", "response": "The king walks."}
    renderer = Renderer(root / "models/chat", instruction(lines(value)))
    held = renderer.prompt(Record("i.jsonl", "line", 1, value))
    assert (held.text, held.reference) == (
        "<|im_start|>user\nWho walks?<|endoftext|>\n<|im_start|>assistant\n",
        "The king walks.",
    )
    example = renderer.example(Record("i.jsonl", "line", 1, value))
    trained = renderer.tok.decode(example.ids[example.trainable].tolist())
    assert trained == "The king walks.<|endoftext|>\n"


def test_held_out_prompts_take_records_first_to_first_plus_count(root: Path) -> None:
    records = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "first"},
                {"role": "user", "content": "more"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(5)
    ]
    held = held_out_prompts(chat(lines(*records)), root, root / "models/chat", 1, 2)
    assert [p.reference for p in held.prompts] == ["a1", "a2"]
    # The prompt is the conversation up to its last assistant turn.
    assert held.prompts[0].text.endswith(
        "<|im_start|>user\nmore<|endoftext|>\n<|im_start|>assistant\n"
    )
    assert held.prompts[0].text.startswith("<|im_start|>user\nq1<|endoftext|>")
    # The tokenizer's end-of-text, then the id the saved model's generation_config names
    # (GPT-2's default end-of-text, 50256).
    eos = Renderer(root / "models/chat", chat("{}")).tok.eos_token_id
    assert held.stop_ids == [eos, 50256]


def _tokenizer_only(root: Path, folder: Path) -> Path:
    """A folder with the plain model's tokenizer files and nothing else."""
    folder.mkdir()
    for file in (root / "models/plain").iterdir():
        if file.name.startswith("tokenizer") or file.name == "special_tokens_map.json":
            (folder / file.name).write_bytes(file.read_bytes())
    return folder


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        (None, []),
        ("not json {", []),
        ("[1, 2]", []),
        ('{"eos_token_id": 5}', [5]),
        ('{"eos_token_id": [5, "x", 6, 5]}', [5, 6]),
        ('{"eos_token_id": null}', []),
    ],
)
def test_stop_ids_add_what_generation_config_names(
    tmp_path: Path, root: Path, config: str | None, extra: list[int]
) -> None:
    folder = _tokenizer_only(root, tmp_path / "m")
    if config is not None:
        (folder / GENERATION_CONFIG).write_text(config)
    renderer = Renderer(folder, instruction("{}"))
    eos = renderer.tok.eos_token_id
    assert isinstance(eos, int)
    assert renderer.stop_ids() == [eos, *[i for i in extra if i != eos]]


def test_a_corpus_of_blank_lines_is_empty(root: Path) -> None:
    with pytest.raises(ModelTrainerError) as err:
        list(read_examples(chat("\n  \n"), root, root / "models/chat"))
    assert (err.value.code, err.value.message) == (
        C.CORPUS_EMPTY,
        "the corpus holds no records",
    )


def test_a_tokenizer_without_end_of_text_stops_on_what_generation_config_names(
    tmp_path: Path, root: Path
) -> None:
    folder = _tokenizer_only(root, tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").unlink(missing_ok=True)
    (folder / GENERATION_CONFIG).write_text('{"eos_token_id": 7}')
    value = {"prompt": "Who walks?", "response": "The king walks."}
    renderer = Renderer(folder, instruction(lines(value)))
    assert (renderer.eos, renderer.stop_ids()) == ("", [7])
    example = renderer.example(Record("i.jsonl", "line", 1, value))
    trained = renderer.tok.decode(example.ids[example.trainable].tolist())
    assert trained == "The king walks."
