"""Every branch of ``core/`` the other fast tests leave: each broken model folder's own typed
refusal (read from hand-written safetensors headers, no torch), the admission refusals of a
backend's table, the strategy a job of several processes picks under a memory budget,
torchrun's environment, and the kernel limits a worker sets on itself."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

import psutil
import pytest
from model_trainer.core import limits
from model_trainer.core.admission import admit, resolve_device_precision
from model_trainer.core.capabilities import CAPABILITIES, Capabilities
from model_trainer.core.distributed import strategy_of
from model_trainer.core.finetune import has_chat_template, lora_parameters
from model_trainer.core.memory import (
    Vocabulary,
    check_memory,
    choose_strategy,
    corpus_bytes,
    estimate,
    vocabulary,
)
from model_trainer.core.pretrained import inspect_pretrained
from model_trainer.core.trainjob import rank_from_env
from model_trainer_contracts import (
    AdapterSpec,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
    TrainingSpec,
)
from pydantic import JsonValue

from .book_helpers import submit

_C = ModelTrainerErrorCode
MIB = 1 << 20


def _safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    """A safetensors file whose header declares ``tensors`` (name: shape), data left out:
    every check reads the header alone."""
    header: dict[str, JsonValue] = {"__metadata__": {"format": "pt"}}
    for name, shape in tensors.items():
        header[name] = {"dtype": "F32", "shape": list[JsonValue](shape), "data_offsets": [0, 0]}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def _model(root: Path, name: str = "m", **config: JsonValue) -> Path:
    """A model folder that passes every check: a config, one weights file, a tokenizer."""
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", **config}))
    _safetensors(folder / "model.safetensors", {"h.0.attn.c_attn.weight": [8, 24]})
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _refusal(root: Path, name: str = "m") -> ModelTrainerErrorCode | None:
    try:
        inspect_pretrained(root, name)
    except ModelTrainerError as exc:
        return exc.code
    return None


def _no_config(f: Path) -> None:
    (f / "config.json").unlink()


def _config_not_json(f: Path) -> None:
    (f / "config.json").write_text("{not json")


def _config_a_list(f: Path) -> None:
    (f / "config.json").write_text("[1, 2]")


def _pickled_only(f: Path) -> None:
    (f / "model.safetensors").rename(f / "pytorch_model.bin")


def _no_weights(f: Path) -> None:
    (f / "model.safetensors").unlink()


def _no_tokenizer(f: Path) -> None:
    (f / "tokenizer.json").unlink()


def _explicit(f: Path, value: JsonValue) -> None:
    (f / "config.json").write_text(json.dumps({"transformers_weights": value}))


def _index(f: Path, index: JsonValue) -> None:
    (f / "model.safetensors").rename(f / "shard-1.safetensors")
    (f / "model.safetensors.index.json").write_text(json.dumps(index))


def _index_not_json(f: Path) -> None:
    (f / "model.safetensors").unlink()
    (f / "model.safetensors.index.json").write_text("{")


def _weights(f: Path, raw: bytes) -> None:
    (f / "model.safetensors").write_bytes(raw)


def _header(header: JsonValue) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


BROKEN = {
    "no config": (_no_config, _C.MODEL_NOT_FOUND),
    "config not JSON": (_config_not_json, _C.MODEL_LOAD_FAILED),
    "config a JSON list": (_config_a_list, _C.MODEL_LOAD_FAILED),
    "pickled weights only": (_pickled_only, _C.MODEL_FORMAT_UNSUPPORTED),
    "no weights": (_no_weights, _C.MODEL_NOT_FOUND),
    "no tokenizer": (_no_tokenizer, _C.TOKENIZER_NOT_FOUND),
    "config names pickled weights": (
        lambda f: _explicit(f, "weights.bin"),
        _C.MODEL_FORMAT_UNSUPPORTED,
    ),
    "config names weights not a string": (
        lambda f: _explicit(f, 3),
        _C.MODEL_FORMAT_UNSUPPORTED,
    ),
    "config names missing weights": (
        lambda f: _explicit(f, "other.safetensors"),
        _C.MODEL_NOT_FOUND,
    ),
    "config names weights outside": (
        lambda f: _explicit(f, "../m2/model.safetensors"),
        _C.PATH_NOT_ALLOWED,
    ),
    "index not JSON": (_index_not_json, _C.MODEL_LOAD_FAILED),
    "index without weight_map": (lambda f: _index(f, {"metadata": {}}), _C.MODEL_LOAD_FAILED),
    "index with an empty weight_map": (
        lambda f: _index(f, {"weight_map": {}}),
        _C.MODEL_LOAD_FAILED,
    ),
    "index a JSON list": (lambda f: _index(f, ["shard-1.safetensors"]), _C.MODEL_LOAD_FAILED),
    "index maps a tensor to no file": (
        lambda f: _index(f, {"weight_map": {"a": "shard-1.safetensors", "b": None}}),
        _C.MODEL_LOAD_FAILED,
    ),
    "index names a missing shard": (
        lambda f: _index(
            f, {"weight_map": {"a": "shard-1.safetensors", "b": "shard-2.safetensors"}}
        ),
        _C.MODEL_NOT_FOUND,
    ),
    "weights shorter than a header length": (
        lambda f: _weights(f, b"\x01\x02"),
        _C.MODEL_LOAD_FAILED,
    ),
    "header over safetensors' limit": (
        lambda f: _weights(f, struct.pack("<Q", 200 * MIB) + b"{}"),
        _C.MODEL_LOAD_FAILED,
    ),
    "header not JSON": (lambda f: _weights(f, struct.pack("<Q", 3) + b"{{{"), _C.MODEL_LOAD_FAILED),
    "header a JSON list": (lambda f: _weights(f, _header([1, 2])), _C.MODEL_LOAD_FAILED),
    "tensor without a shape": (
        lambda f: _weights(f, _header({"w": {"dtype": "F32"}})),
        _C.MODEL_LOAD_FAILED,
    ),
    "tensor with a shape of strings": (
        lambda f: _weights(f, _header({"w": {"shape": ["8"]}})),
        _C.MODEL_LOAD_FAILED,
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_model_folder_gets_its_own_typed_refusal(tmp_path: Path, case: str) -> None:
    _model(tmp_path, "m2")  # a sound neighbour: naming its weights still leaves the folder
    folder = _model(tmp_path)
    assert _refusal(tmp_path) is None
    breaks, code = BROKEN[case]
    breaks(folder)
    assert _refusal(tmp_path) is code


def test_a_model_folder_that_is_a_file_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("not a folder")
    assert _refusal(tmp_path) is _C.MODEL_NOT_FOUND


def test_the_config_may_name_the_weights_file_or_index_transformers_loads(
    tmp_path: Path,
) -> None:
    folder = _model(tmp_path)
    _safetensors(folder / "big.safetensors", {"w": [1000, 1000]})
    _explicit(folder, "big.safetensors")
    named = inspect_pretrained(tmp_path, "m")
    assert (named.weights, named.parameters) == ((folder / "big.safetensors",), 1_000_000)
    (folder / "big.index.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "big.safetensors", "b": "model.safetensors"}})
    )
    _explicit(folder, "big.index.safetensors.index.json")
    indexed = inspect_pretrained(tmp_path, "m")
    shards = (folder / "big.safetensors", folder / "model.safetensors")
    assert (indexed.weights, indexed.parameters) == (shards, 1_000_000 + 8 * 24)


def test_a_config_without_positions_sets_no_window_limit(tmp_path: Path) -> None:
    _model(tmp_path)
    folder = inspect_pretrained(tmp_path, "m")
    assert folder.max_positions is None
    folder.check_window(1 << 20)  # no limit to exceed
    _model(tmp_path, "p", n_positions=0, n_ctx=True, max_position_embeddings=64)
    assert inspect_pretrained(tmp_path, "p").max_positions == 64


def _pretrained_job(**fields: JsonValue) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": "ft",
            "user_id": 7,
            "backend": "pretrained",
            "model": {"path": "m", "block_size": 16},
            "tokenizer": {"kind": "model"},
            "data": {"inline_text": "hello world " * 10},
            "training": {"max_steps": 2},
            **fields,
        }
    )


def test_a_pretrained_model_over_the_backends_bound_is_refused_at_acceptance(
    tmp_path: Path,
) -> None:
    folder = _model(tmp_path)
    admit(_pretrained_job(), data_root=tmp_path)
    # 3e9 values declared in a header of a few bytes: nothing is loaded to count them.
    _safetensors(folder / "model.safetensors", {"w": [3, 1000, 1000, 1000]})
    with pytest.raises(ModelTrainerError) as refused:
        admit(_pretrained_job(), data_root=tmp_path)
    assert refused.value.code is _C.INVALID_MODEL_SIZE
    assert refused.value.details == {"parameters": 3_000_000_000, "max_parameters": 2_000_000_000}


def test_a_backend_that_cannot_fine_tune_refuses_init_from() -> None:
    with pytest.raises(ModelTrainerError) as refused:
        admit(_pretrained_job(init_from="earlier"))
    assert refused.value.code is _C.UNSUPPORTED_BACKEND
    assert "cannot fine-tune" in refused.value.message


def test_a_backend_that_cannot_be_compiled_refuses_compile_on() -> None:
    job = submit("compiled").model_dump()
    for compile_ in ("on", True):
        asked = SubmitJobV1.model_validate(
            {**job, "training": {**job["training"], "compile": compile_}}
        )
        with pytest.raises(ModelTrainerError) as refused:
            admit(asked)
        assert (refused.value.code, refused.value.details) == (
            _C.UNSUPPORTED_BACKEND,
            {"backend": "char_lstm"},
        )
    admit(SubmitJobV1.model_validate({**job, "training": {**job["training"], "compile": "auto"}}))


def test_the_table_has_a_row_for_every_backend_the_contracts_name() -> None:
    backends = get_args(SubmitJobV1.model_fields["backend"].annotation)
    assert sorted(CAPABILITIES) == sorted(backends)


def test_a_device_the_backend_lacks_is_refused() -> None:
    cpu_only = Capabilities(
        tokenizers=frozenset({"char"}),
        devices=frozenset({"cpu"}),
        precisions=frozenset({"fp32"}),
        max_parameters=1000,
        max_context=64,
        can_resume=False,
        can_finetune=False,
    )
    on_gpu = TrainingSpec.model_validate({"device": "auto"})
    assert resolve_device_precision(
        on_gpu, cpu_only, cuda_available=False, bf16_supported=False
    ) == ("cpu", "fp32")
    with pytest.raises(ModelTrainerError) as refused:
        resolve_device_precision(on_gpu, cpu_only, cuda_available=True, bf16_supported=True)
    assert (refused.value.code, refused.value.details) == (
        _C.UNSUPPORTED_BACKEND,
        {"device": "cuda"},
    )


def test_a_chat_template_is_found_in_either_file_or_the_tokenizer_config(
    tmp_path: Path,
) -> None:
    folders = [tmp_path / name for name in ("jinja", "config", "empty", "broken", "none")]
    for folder in folders:
        folder.mkdir()
    (folders[0] / "chat_template.jinja").write_text("{{ messages }}")
    (folders[1] / "tokenizer_config.json").write_text('{"chat_template": "{{ m }}"}')
    (folders[2] / "tokenizer_config.json").write_text('{"chat_template": ""}')
    (folders[3] / "tokenizer_config.json").write_text("{broken")
    assert [has_chat_template(f) for f in folders] == [True, True, False, False, False]


def test_a_lora_adapter_counts_the_matrices_it_wraps_and_nothing_else(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    _safetensors(
        folder / "model.safetensors",
        {
            "h.0.attn.c_attn.weight": [8, 24],  # wrapped: 4 * (8 + 24)
            "h.0.attn.c_attn.bias": [24],  # a bias: not wrapped
            "h.0.ln.weight": [8],  # one dimension: not wrapped
            "h.0.mlp.c_fc.weight": [8, 32],  # not a target
        },
    )
    adapter = AdapterSpec.model_validate({"kind": "lora", "r": 4})
    assert lora_parameters(inspect_pretrained(tmp_path, "m"), adapter) == 4 * (8 + 24)


def _several(strategy: str = "auto", processes: int = 4) -> SubmitJobV1:
    """A job whose optimizer state dominates its memory: sharding it pays from 3 processes."""
    return SubmitJobV1.model_validate(
        {
            "job_id": "spread",
            "user_id": 7,
            "backend": "gpt2",
            "model": {"n_layer": 4, "n_embd": 256, "n_head": 4, "block_size": 16},
            "data": {"inline_text": "hello world " * 10},
            "training": {"max_steps": 2, "batch_size": 4, "device": "cpu"},
            "resources": {"processes": processes, "strategy": strategy},
        }
    )


def test_auto_shards_the_model_only_when_a_whole_replica_does_not_fit() -> None:
    job = _several()
    vocab = vocabulary(job, None)
    sizes = {
        s: estimate(
            job,
            vocabulary=vocab,
            corpus_bytes=corpus_bytes(job, None),
            device="cpu",
            precision="fp32",
            strategy=s,
        ).host_bytes
        for s in ("ddp", "fsdp")
    }
    assert sizes["fsdp"] < sizes["ddp"]
    between = (sizes["fsdp"] + sizes["ddp"]) // 2 // MIB
    assert strategy_of(job, None) == "ddp"  # no budget: a replica per process
    assert strategy_of(job, sizes["ddp"] // MIB + 1) == "ddp"
    assert strategy_of(job, between) == "fsdp"
    assert strategy_of(job, 1) == "ddp"  # neither fits: the refusal names ddp's estimate
    assert strategy_of(_several("fsdp"), None) == "fsdp"


def test_an_explicit_strategy_is_kept_whatever_fits() -> None:
    job = _several("ddp")
    assert choose_strategy(job, lambda s: s == "fsdp") == "ddp"
    found = check_memory(
        job,
        1 << 20,
        vocabulary=Vocabulary(257, "char_bound"),
        corpus_bytes=0,
        device="cpu",
        precision="fp32",
    )
    assert (found.strategy, found.processes) == ("ddp", 4)


def test_torchruns_rank_must_be_an_integer() -> None:
    job = _several("ddp", processes=2)
    environ = {"RANK": "one", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    with pytest.raises(ModelTrainerError) as refused:
        rank_from_env(job, environ)
    assert (refused.value.code, refused.value.details) == (
        _C.COMMAND_INVALID,
        {"RANK": "one", "WORLD_SIZE": "2"},
    )


def test_the_containers_memory_limit_bounds_the_hosts(tmp_path: Path) -> None:
    unlimited, limited, missing = tmp_path / "v2", tmp_path / "v1", tmp_path / "none"
    unlimited.write_text("max\n")
    limited.write_text(f"{64 * MIB}\n")
    total = psutil.virtual_memory().total
    assert limits.host_memory_bytes([missing, unlimited]) == total
    assert limits.host_memory_bytes([missing, unlimited, limited]) == min(total, 64 * MIB)


def test_the_heap_size_is_read_from_proc_or_unknown(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmRSS:\t  100 kB\n")
    assert limits.data_size(status) == 0  # no VmData line
    assert limits.data_size(tmp_path / "missing") == 0
    assert limits.limit_data(64, tmp_path / "missing") is None  # nothing set
    status.write_text("VmData:\t  2048 kB\n")
    assert limits.data_size(status) == 2 * MIB
    assert limits.data_size() > 0  # this process's own


def test_a_workers_oom_score_is_raised_never_lowered(tmp_path: Path) -> None:
    low, high, garbage = tmp_path / "low", tmp_path / "high", tmp_path / "garbage"
    low.write_text("0\n")
    high.write_text("800\n")
    garbage.write_text("n/a\n")
    results = [limits.prefer_oom_kill(500, p) for p in (low, high, garbage, tmp_path / "gone")]
    assert results == [True, True, False, False]
    assert [low.read_text().strip(), high.read_text().strip()] == ["500", "800"]


def test_without_glibc_freed_memory_is_left_to_the_allocator() -> None:
    assert limits.c_library("libno-such-library.so.0") is None
    assert limits.return_freed_memory(None) is False  # no C library to ask
    limits.release_memory(full=True, libc=None)  # collects, trims nothing: no error
    limits.release_memory(full=False)


_WORKER = textwrap.dedent(
    """
    import json, resource
    from pathlib import Path
    from model_trainer.core import limits

    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    set_limit = limits.limit_data(256)
    soft_after, _ = resource.getrlimit(resource.RLIMIT_DATA)
    try:
        bytearray(512 << 20)  # past the budget: refused at once, the process lives on
        refused = False
    except MemoryError:
        refused = True
    low = limits.data_size() + (16 << 20)
    resource.setrlimit(resource.RLIMIT_DATA, (low, low))
    print(json.dumps({
        "set": set_limit == soft_after,
        "refused": refused,
        "under_a_low_hard_limit": limits.limit_data(256),
        "oom": limits.prefer_oom_kill(),
        "oom_score_adj": int(Path("/proc/self/oom_score_adj").read_text()),
        "glibc": limits.return_freed_memory(),
    }))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA and /proc are Linux's")
def test_a_worker_limits_its_own_heap_and_offers_itself_to_the_oom_killer() -> None:
    """In a process of its own: the limits cannot be undone in this one."""
    done = subprocess.run(
        [sys.executable, "-c", _WORKER], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == {
        "set": True,
        "refused": True,
        "under_a_low_hard_limit": None,
        "oom": True,
        "oom_score_adj": max(500, _own_oom_score_adj()),
        "glibc": True,
    }


def _own_oom_score_adj() -> int:
    return int(Path("/proc/self/oom_score_adj").read_text())
