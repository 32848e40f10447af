"""A job of several nodes: refused by one instance, written as a Kubeflow Trainer TrainJob that
validates offline against the Trainer CRD pinned in deploy/kubeflow/ (no cluster here).

The CRD's ``openAPIV3Schema`` is checked with ``jsonschema`` (draft 4, the dialect OpenAPI
3.0 schemas follow), plus what the API server adds to it: unknown fields refused (strict field
validation, ``kubectl``'s default), the list-map keys unique (``x-kubernetes-list-type: map``),
and the CRD's CEL rules (``x-kubernetes-validations``), of which this file implements each one
the pinned CRD holds and fails on any other. ``x-kubernetes-int-or-string`` needs nothing more:
controller-gen writes it beside an ``anyOf`` of integer and string, which jsonschema checks.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from model_trainer.commands.cli import app
from model_trainer.core.trainjob import (
    JOB_ENV,
    JOB_ID_ANNOTATION,
    RESERVED_ENV,
    TrainJobOptions,
    check_nodes,
    rank_from_env,
    trainjob_manifest,
    trainjob_name,
)
from model_trainer.settings import Settings
from model_trainer.shell.budgets import admit_limits
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1
from pydantic import JsonValue
from typer.testing import CliRunner

from tests.figures import Figure

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "deploy" / "kubeflow" / "trainer.kubeflow.org_trainjobs.yaml"
CRD_VERSION = "v2.3.0"
CRD_SHA256 = "a742cafc5b5582640c7e0b7467c024fc237256fbca5ba0a9f0531dfb66d64416"

# The CEL rules of the pinned CRD that apply when a TrainJob is created (the others compare
# with ``oldSelf``: updates only), by where they sit; each with what it checks here.
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://.+$")
CEL_RULES: dict[tuple[str, str], Callable[[JsonValue], bool]] = {
    ("", "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"): lambda o: bool(
        _RFC1035.match(str(_at(o, "metadata.name")))
    ),
    ("", "size(self.metadata.name) <= 63"): lambda o: len(str(_at(o, "metadata.name"))) <= 63,
    (
        ".spec.initializer.dataset.storageUri",
        "self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')",
    ): lambda v: v == "" or bool(_URI.match(str(v))),
    (
        ".spec.initializer.model.storageUri",
        "self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')",
    ): lambda v: v == "" or bool(_URI.match(str(v))),
    (
        ".spec.managedBy",
        "self in ['trainer.kubeflow.org/trainjob-controller', 'kueue.x-k8s.io/multikueue']",
    ): lambda v: v in ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"),
    (".status.trainerStatus", "has(self.lastUpdatedTime)"): lambda v: (
        isinstance(v, dict) and "lastUpdatedTime" in v
    ),
}
# What Kubernetes itself checks of ObjectMeta (a label value: at most 63 characters).
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_Obj = dict[str, JsonValue]


def _at(doc: JsonValue, path: str) -> JsonValue:
    for part in path.split(".") if path else []:
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _obj(value: JsonValue) -> _Obj:
    assert isinstance(value, dict)
    return value


@functools.cache
def _schema() -> _Obj:
    loaded = yaml.load(CRD.read_text(), Loader=yaml.CSafeLoader)  # C: the CRD is 550 kB
    spec = _obj(_obj(loaded)["spec"])
    versions = spec["versions"]
    assert isinstance(versions, list)
    assert len(versions) == 1
    version = _obj(versions[0])
    assert version["name"] == "v1alpha1"
    return _obj(_obj(version["schema"])["openAPIV3Schema"])


def _strict(schema: JsonValue) -> JsonValue:
    """``schema`` with unknown fields refused wherever the API server would drop them (an
    object with ``properties``, no ``additionalProperties`` and no
    ``x-kubernetes-preserve-unknown-fields``): strict field validation reports them."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and out.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    return out


def _rules(schema: _Obj, path: str = "") -> Iterator[tuple[str, str]]:
    """Every CEL rule of ``schema`` that applies on create: (where, the rule), where a list's
    items are ``[]``."""
    for rule in _as_list(schema.get("x-kubernetes-validations", [])):
        text = str(_obj(rule)["rule"])
        if "oldSelf" not in text:
            yield path, text
    for name, sub in _obj(schema.get("properties") or {}).items():
        yield from _rules(_obj(sub), f"{path}.{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _rules(items, f"{path}[]")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _rules(extra, f"{path}{{}}")


def _list_maps(schema: _Obj, doc: JsonValue, path: str = "") -> Iterator[str]:
    """Where ``doc`` repeats a key of an ``x-kubernetes-list-type: map`` list."""
    if isinstance(doc, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = [str(k) for k in _as_list(schema.get("x-kubernetes-list-map-keys", []))]
        seen = [tuple(str(_obj(item).get(k)) for k in keys) for item in doc]
        if len(set(seen)) != len(seen):
            yield f"{path}: duplicate {keys}"
    if isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(doc):
            yield from _list_maps(_obj(schema["items"]), item, f"{path}[{index}]")
    if isinstance(doc, dict):
        properties = _obj(schema.get("properties") or {})
        for name, value in doc.items():
            if name in properties:
                yield from _list_maps(_obj(properties[name]), value, f"{path}.{name}")


@functools.cache
def _validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_strict(_schema()))


def problems(doc: JsonValue) -> list[str]:
    """Why the API server (with the pinned CRD) would refuse ``doc`` on create; [] if it would
    take it."""
    schema = _schema()
    validator = _validator()
    found = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '.'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]
    found += list(_list_maps(schema, doc))
    for where, rule in _rules(schema):
        check = CEL_RULES[(where, rule)]
        value = doc if where == "" else _at(doc, where.lstrip(".").replace("[]", ""))
        if (where == "" or value is not None) and not check(value):
            found.append(f"{where or '.'}: CEL {rule}")
    metadata = _obj(_obj(doc).get("metadata") or {})
    for key, value in _obj(metadata.get("labels") or {}).items():
        if not (isinstance(value, str) and len(value) <= 63 and _LABEL_VALUE.match(value)):
            found.append(f"metadata.labels.{key}: not a label value")
    return found


def _job(**resources: JsonValue) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": "shakespeare_2x2.v1",
            "user_id": 7,
            "backend": "gpt2",
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
            "data": {"corpus_path": "s3://corpora/tinyshakespeare.txt"},
            "training": {"max_steps": 20, "batch_size": 8, "device": "cpu"},
            "resources": {"nodes": 2, "processes": 2, **resources},
            "labels": {"team": "nlp"},
        }
    )


OPTIONS = TrainJobOptions(
    image="registry.example.com/model-trainer:cpu",
    namespace="training",
    s3_secret="model-trainer-s3",
    s3_endpoint="http://seaweedfs.storage:8333",
    artifacts_url="s3://artifacts/jobs",
)


def test_the_pinned_crd_is_the_release_it_names(figure: Figure) -> None:
    digest = hashlib.sha256(CRD.read_bytes()).hexdigest()
    figure(f"CRD {CRD_VERSION} sha256 {digest}")
    assert digest == CRD_SHA256
    readme = (CRD.parent / "README.md").read_text()
    assert CRD_VERSION in readme
    assert CRD_SHA256 in readme
    # Every create-time CEL rule of the CRD has its check here: a new one fails this test.
    assert sorted(_rules(_schema())) == sorted(CEL_RULES)


def test_the_trainjob_of_a_two_node_job_validates_against_the_crd(figure: Figure) -> None:
    manifest = trainjob_manifest(_job(), OPTIONS)
    found = problems(manifest)
    trainer = _obj(_obj(manifest["spec"])["trainer"])
    figure(
        f"problems {len(found)}: numNodes {trainer['numNodes']}, numProcPerNode "
        f"{trainer['numProcPerNode']}, name {_obj(manifest['metadata'])['name']}"
    )
    assert found == []
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert manifest["kind"] == "TrainJob"
    assert _obj(_obj(manifest["spec"])["runtimeRef"])["name"] == "torch-distributed"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 2)
    env = [_obj(e) for e in _as_list(trainer["env"])]
    job = SubmitJobV1.model_validate_json(str(_value(env, JOB_ENV)))
    assert job == _job()  # the pods run the very job
    assert _obj(manifest["metadata"])["annotations"] == {JOB_ID_ANNOTATION: "shakespeare_2x2.v1"}
    command = _as_list(trainer["command"])
    assert command[:2] == ["sh", "-c"]
    assert "exec torchrun --no-python model-trainer run --ranks-from-env" in str(command[2])
    assert "--artifacts-url s3://artifacts/jobs" in str(command[2])


def _as_list(value: JsonValue) -> list[JsonValue]:
    assert isinstance(value, list)
    return value


def _value(env: list[_Obj], name: str) -> JsonValue:
    (entry,) = [e for e in env if e["name"] == name]
    return entry.get("value")


def test_credentials_come_from_secrets_and_the_runtime_keeps_its_variables() -> None:
    trainer = _obj(_obj(trainjob_manifest(_job(), OPTIONS)["spec"])["trainer"])
    env = [_obj(e) for e in _as_list(trainer["env"])]
    names = [str(e["name"]) for e in env]
    assert not set(names) & set(RESERVED_ENV)  # the Trainer's webhook refuses PET_* here
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        (entry,) = [e for e in env if e["name"] == secret]
        assert entry == {
            "name": secret,
            "valueFrom": {"secretKeyRef": {"name": "model-trainer-s3", "key": secret}},
        }
    bare = trainjob_manifest(_job(), TrainJobOptions(image="model-trainer:cpu"))
    bare_env = _as_list(_obj(_obj(bare["spec"])["trainer"])["env"])
    assert [_obj(e)["name"] for e in bare_env] == [JOB_ENV]
    assert problems(bare) == []


def _broken(change: Callable[[_Obj], object]) -> list[str]:
    manifest = copy.deepcopy(trainjob_manifest(_job(), OPTIONS))
    change(manifest)
    return problems(manifest)


def _trainer(m: _Obj) -> _Obj:
    return _obj(_obj(m["spec"])["trainer"])


BROKEN: dict[str, Callable[[_Obj], object]] = {
    "numNodes as a string": lambda m: _trainer(m).update(numNodes="2"),
    "no runtimeRef": lambda m: _obj(m["spec"]).pop("runtimeRef"),
    "runtimeRef without its name": lambda m: _obj(_obj(m["spec"])["runtimeRef"]).pop("name"),
    "an unknown trainer field": lambda m: _trainer(m).update(numGPUs=1),
    "memory not a quantity": lambda m: _obj(_obj(_trainer(m)["resourcesPerNode"])["limits"]).update(
        memory="4 GB"
    ),
    "an env entry without a name": lambda m: _as_list(_trainer(m)["env"]).append({"value": "x"}),
    "one env name twice": lambda m: _as_list(_trainer(m)["env"]).append(
        {"name": JOB_ENV, "value": "{}"}
    ),
    "a name with capitals": lambda m: _obj(m["metadata"]).update(name="Shakespeare"),
    "a name over 63 characters": lambda m: _obj(m["metadata"]).update(name="a" * 64),
    "managedBy someone else": lambda m: _obj(m["spec"]).update(managedBy="me"),
}


@pytest.mark.parametrize("why", list(BROKEN))
def test_a_broken_trainjob_is_refused(why: str, figure: Figure) -> None:
    found = _broken(BROKEN[why])
    figure(f"{why}: {found}")
    assert found


@pytest.mark.parametrize(
    "job_id",
    ["shakespeare", "Shakespeare_2x2.v1", "7-digits-first", "x" * 128, "a.b_c-D" * 18],
)
def test_every_job_id_gets_a_valid_distinct_name(job_id: str) -> None:
    name = trainjob_name(job_id)
    assert _RFC1035.match(name)
    assert len(name) <= 63
    assert trainjob_name(job_id.swapcase()) != name or job_id.swapcase() == job_id
    job = _job().model_copy(update={"job_id": job_id})
    assert problems(trainjob_manifest(job, OPTIONS)) == []


def test_one_instance_refuses_a_job_of_several_nodes() -> None:
    with pytest.raises(ModelTrainerError) as refused:
        admit_limits(_job(), Settings(workers=2))
    error = refused.value
    assert error.code is ModelTrainerErrorCode.RESOURCE_LIMIT_EXCEEDED
    assert error.details == {
        "field": "resources.nodes",
        "value": 2,
        "limit": 1,
        "run_as": "TrainJob",
    }
    check_nodes(_job(nodes=1, processes=2))  # one node: the slots' check decides


def test_a_rank_takes_its_place_from_torchrun() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "node-0", "MASTER_PORT": "29400"}
    rank = rank_from_env(_job(strategy="fsdp"), env)
    assert (rank.rank, rank.world, rank.strategy, rank.init_method) == (3, 4, "fsdp", "env://")
    assert rank_from_env(_job(), env).strategy == "ddp"  # auto, without a memory budget
    for bad, key in [({**env, "WORLD_SIZE": "2"}, "expected"), ({"RANK": "0"}, "missing")]:
        with pytest.raises(ModelTrainerError) as refused:
            rank_from_env(_job(), bad)
        assert refused.value.code is ModelTrainerErrorCode.COMMAND_INVALID
        assert key in refused.value.details


def test_the_cli_prints_the_manifest_and_refuses_a_backend_without_ranks(tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(_job().model_dump_json())
    args = ["trainjob", str(job_file), "--image", "model-trainer:cpu", "--namespace", "training"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    options = TrainJobOptions(image="model-trainer:cpu", namespace="training")
    assert printed == trainjob_manifest(_job(), options)
    assert problems(printed) == []
    lstm = _job().model_dump(mode="json") | {"backend": "char_lstm", "model": {}}
    job_file.write_text(SubmitJobV1.model_validate(lstm).model_dump_json())
    result = CliRunner().invoke(app, ["trainjob", str(job_file), "--image", "x"])
    assert result.exit_code == 1
    assert "UNSUPPORTED_BACKEND" in result.output
