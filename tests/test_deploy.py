"""deploy/ agrees with the service, checked offline: no Docker engine, no cluster.

Every Kubernetes manifest is validated against the Kubernetes JSON schemas that
kubernetes-validate bundles (strict: unknown fields fail); KEDA's ScaledObject, a custom
resource those schemas do not know, is checked field by field. Where kubectl is installed,
every kustomization is built too and its output checked the same way. The Dockerfile and
.dockerignore are checked as text, the torch flavours against uv.lock.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import socket
import stat
import subprocess
import tomllib
from fractions import Fraction
from pathlib import Path

import kubernetes_validate
import pytest
import torch_flavour
import yaml
from model_trainer.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
# The oldest Kubernetes minor still under its vendors' extended support here, and the newest
# the schemas know.
KUBERNETES_VERSIONS = ("1.29", str(kubernetes_validate.latest_version()))
SETTINGS = frozenset(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)
# The Kafka security settings the manifests give a place (the password from a Secret).
KAFKA_SECURITY = frozenset(
    {
        "MODEL_TRAINER_KAFKA_SECURITY_PROTOCOL",
        "MODEL_TRAINER_KAFKA_SASL_MECHANISM",
        "MODEL_TRAINER_KAFKA_SASL_USERNAME",
        "MODEL_TRAINER_KAFKA_SASL_PASSWORD",
        "MODEL_TRAINER_KAFKA_SSL_CAFILE",
    }
)
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
CRD_KINDS = {"ScaledObject"}

# ------------------------------------------------------------------ typed access to YAML


def _at(node: object, *path: str | int) -> object:
    for key in path:
        if isinstance(key, int):
            assert isinstance(node, list), f"expected a list before [{key}]"
            node = node[key]
        else:
            assert isinstance(node, dict), f"expected a mapping before {key!r}"
            assert key in node, f"missing {key!r}"
            node = node[key]
    return node


def _map(node: object, *path: str | int) -> dict[str, object]:
    found = _at(node, *path)
    assert isinstance(found, dict), f"{path} is not a mapping"
    return {str(k): v for k, v in found.items()}


def _maps(node: object, *path: str | int) -> list[dict[str, object]]:
    found = _at(node, *path)
    assert isinstance(found, list), f"{path} is not a list"
    return [_map(item) for item in found]


def _text(node: object, *path: str | int) -> str:
    found = _at(node, *path)
    assert isinstance(found, str), f"{path} is not a string: {found!r}"
    return found


def _int(node: object, *path: str | int) -> int:
    found = _at(node, *path)
    assert isinstance(found, int), f"{path} is not an integer: {found!r}"
    return found


def _documents(text: str) -> list[dict[str, object]]:
    return [_map(doc) for doc in yaml.safe_load_all(text) if doc is not None]


def _manifest_files() -> list[Path]:
    """Every YAML file under deploy/k8s that holds Kubernetes objects."""
    return sorted(
        path
        for path in K8S.rglob("*.yaml")
        if not {_text(doc, "kind") for doc in _documents(path.read_text())} & KUSTOMIZE_KINDS
    )


def _kustomizations(kind: str | None = None) -> list[Path]:
    """Directories with a kustomization.yaml (of ``kind``: Kustomization or Component)."""
    return sorted(
        path.parent
        for path in K8S.rglob("kustomization.yaml")
        if kind is None or _text(yaml.safe_load(path.read_text()), "kind") == kind
    )


def _by_kind(docs: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    kinds: dict[str, dict[str, object]] = {}
    for doc in docs:
        kind = _text(doc, "kind")
        assert kind not in kinds, f"two {kind} objects"
        kinds[kind] = doc
    return kinds


def _base() -> dict[str, dict[str, object]]:
    return _by_kind(
        [doc for name in _resources(BASE) for doc in _documents((BASE / name).read_text())]
    )


def _resources(directory: Path) -> list[str]:
    found = _at(yaml.safe_load((directory / "kustomization.yaml").read_text()), "resources")
    assert isinstance(found, list)
    return [str(item) for item in found]


def _container(statefulset: dict[str, object]) -> dict[str, object]:
    containers = _maps(statefulset, "spec", "template", "spec", "containers")
    assert len(containers) == 1
    return containers[0]


def _env(statefulset: dict[str, object]) -> dict[str, dict[str, object]]:
    return {_text(entry, "name"): entry for entry in _maps(_container(statefulset), "env")}


def _settings_map(configmap: dict[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in _map(configmap, "data").items()}


def _quantity(text: str) -> Fraction:
    """A Kubernetes quantity (the suffixes these manifests use) as a number."""
    units: dict[str, Fraction] = {
        "": Fraction(1),
        "m": Fraction(1, 1000),
        "Ki": Fraction(2**10),
        "Mi": Fraction(2**20),
        "Gi": Fraction(2**30),
        "Ti": Fraction(2**40),
    }
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|m)?", text)
    assert match is not None, f"unexpected quantity {text!r}"
    return int(match[1]) * units[match[2] or ""]


# ------------------------------------------------------------------ schemas


def _validate(doc: dict[str, object], where: str) -> None:
    """Against each of KUBERNETES_VERSIONS' schemas, strictly; a short message on failure."""
    for version in KUBERNETES_VERSIONS:
        problem = None
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problem = f"{_text(doc, 'kind')} at {path or '.'}: {error.message}"
        if problem is not None:
            pytest.fail(f"{where}: invalid for Kubernetes {version}: {problem}", pytrace=False)


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(Path(p).relative_to(K8S)))
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = _documents(path.read_text())
    assert docs, f"{path} holds no object"
    for doc in docs:
        if _text(doc, "kind") in CRD_KINDS:
            continue  # not in Kubernetes' schemas: test_scaled_object checks it by hand
        _validate(doc, str(path.relative_to(K8S)))


def test_every_manifest_is_in_a_kustomization() -> None:
    listed: set[Path] = set()
    for directory in _kustomizations():
        kustomization = _map(yaml.safe_load((directory / "kustomization.yaml").read_text()))
        for key in ("resources", "components"):
            entries = kustomization.get(key, [])
            assert isinstance(entries, list)
            for entry in entries:
                target = (directory / str(entry)).resolve()
                assert target.exists(), f"{directory}: {key} names missing {entry}"
                listed.add(target)
    orphans = [p for p in _manifest_files() if p not in listed and p.name != "secret.example.yaml"]
    assert not orphans, f"manifests no kustomization uses: {orphans}"
    # The Secret is the user's to create: applying the manifests must never overwrite it.
    assert (K8S / "secret.example.yaml").resolve() not in listed


# ------------------------------------------------------------------ the StatefulSet


def test_every_variable_is_a_setting() -> None:
    base = _base()
    configmap_text = (BASE / "configmap.yaml").read_text()
    # Keys commented out in the ConfigMap are the ones users uncomment: real names too.
    commented = set(re.findall(r"^\s*#\s*(MODEL_TRAINER_[A-Z0-9_]+):", configmap_text, re.M))
    names = set(_settings_map(base["ConfigMap"])) | set(_env(base["StatefulSet"])) | commented
    unknown = names - SETTINGS
    assert not unknown, f"manifests set variables the service never reads: {sorted(unknown)}"
    assert names >= KAFKA_SECURITY, "every Kafka security setting has its place"


def test_settings_parse_the_configmap(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _settings_map(_base()["ConfigMap"]).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.http_host == "0.0.0.0"
    assert (settings.workers, settings.threads_per_worker) == (2, 2)
    assert settings.artifacts_root == Path("/shared/artifacts")


def test_instance_id_is_the_pod_name() -> None:
    base = _base()
    assert "MODEL_TRAINER_INSTANCE_ID" not in _settings_map(base["ConfigMap"])
    entry = _env(base["StatefulSet"])["MODEL_TRAINER_INSTANCE_ID"]
    assert _text(entry, "valueFrom", "fieldRef", "fieldPath") == "metadata.name"


def test_kafka_password_comes_from_the_secret() -> None:
    base = _base()
    assert "MODEL_TRAINER_KAFKA_SASL_PASSWORD" not in _settings_map(base["ConfigMap"])
    ref = _map(_env(base["StatefulSet"])["MODEL_TRAINER_KAFKA_SASL_PASSWORD"], "valueFrom")
    secret = _documents((K8S / "secret.example.yaml").read_text())[0]
    assert _text(ref, "secretKeyRef", "name") == _text(secret, "metadata", "name")
    assert _text(ref, "secretKeyRef", "key") in _map(secret, "stringData")


def test_probes_hit_healthz_and_readyz_on_the_http_port() -> None:
    base = _base()
    settings = _settings_map(base["ConfigMap"])
    container = _container(base["StatefulSet"])
    ports = {_text(p, "name"): _int(p, "containerPort") for p in _maps(container, "ports")}
    assert settings["MODEL_TRAINER_HTTP_HOST"] == "0.0.0.0"
    for probe, path in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ]:
        assert _text(container, probe, "httpGet", "path") == path
        port = _at(container, probe, "httpGet", "port")
        number = ports[port] if isinstance(port, str) else port
        assert str(number) == settings["MODEL_TRAINER_HTTP_PORT"], probe
    service = base["Service"]
    assert _text(service, "spec", "clusterIP") == "None", "headless"
    assert _text(base["StatefulSet"], "spec", "serviceName") == _text(service, "metadata", "name")
    assert _text(_maps(service, "spec", "ports")[0], "targetPort") in ports


def test_termination_grace_exceeds_the_shutdown_grace() -> None:
    base = _base()
    grace = float(
        _settings_map(base["ConfigMap"]).get(
            "MODEL_TRAINER_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default
        )
    )
    period = _int(base["StatefulSet"], "spec", "template", "spec", "terminationGracePeriodSeconds")
    # After the grace the service still closes its consumer (5 s) and pool (2 s).
    assert period >= grace + 10


def test_artifacts_and_checkpoints_are_on_a_shared_rwx_volume() -> None:
    base = _base()
    claim = base["PersistentVolumeClaim"]
    assert _at(claim, "spec", "accessModes") == ["ReadWriteMany"]
    statefulset = base["StatefulSet"]
    assert "volumeClaimTemplates" not in _map(statefulset, "spec"), "one volume for all pods"
    volumes = {
        _text(v, "name"): v for v in _maps(statefulset, "spec", "template", "spec", "volumes")
    }
    mounts = {
        _text(m, "name"): _text(m, "mountPath")
        for m in _maps(_container(statefulset), "volumeMounts")
    }
    shared = [
        name
        for name, volume in volumes.items()
        if "persistentVolumeClaim" in volume
        and _text(volume, "persistentVolumeClaim", "claimName") == _text(claim, "metadata", "name")
    ]
    assert len(shared) == 1
    settings = _settings_map(base["ConfigMap"])
    for root in ("MODEL_TRAINER_ARTIFACTS_ROOT", "MODEL_TRAINER_DATA_ROOT"):
        # Checkpoints live in <artifacts root>/<job_id>/checkpoints.
        assert Path(settings[root]).is_relative_to(mounts[shared[0]]), root


def _check_resources(statefulset: dict[str, object], configmap: dict[str, object]) -> None:
    """Memory = workers x worker budget + service overhead; CPU = workers x threads."""
    settings = _settings_map(configmap)
    workers = int(settings["MODEL_TRAINER_WORKERS"])
    threads = int(settings["MODEL_TRAINER_THREADS_PER_WORKER"])
    budget = _map(statefulset, "spec", "template", "metadata", "annotations")
    expected = workers * _quantity(str(budget["model-trainer/worker-memory"])) + _quantity(
        str(budget["model-trainer/service-memory"])
    )
    resources = _map(_container(statefulset), "resources")
    assert _quantity(_text(resources, "requests", "memory")) == expected
    assert _quantity(_text(resources, "limits", "memory")) == expected
    assert _quantity(_text(resources, "requests", "cpu")) == workers * threads


def test_resources_follow_the_worker_memory_budget() -> None:
    base = _base()
    _check_resources(base["StatefulSet"], base["ConfigMap"])


def test_disruption_budget_lets_one_pod_go_at_a_time() -> None:
    base = _base()
    pdb = base["PodDisruptionBudget"]
    assert _at(pdb, "spec", "maxUnavailable") == 1
    labels = _map(base["StatefulSet"], "spec", "template", "metadata", "labels")
    assert _map(pdb, "spec", "selector", "matchLabels").items() <= labels.items()


# ------------------------------------------------------------------ KEDA


def _check_scaled_object(
    scaled: dict[str, object], statefulset: dict[str, object], configmap: dict[str, object]
) -> None:
    """KEDA's ScaledObject, field by field (Kubernetes' schemas do not know the CRD)."""
    settings = _settings_map(configmap)
    assert _text(scaled, "apiVersion") == "keda.sh/v1alpha1"
    spec = _map(scaled, "spec")
    known = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval"}
    known |= {"cooldownPeriod", "advanced", "triggers", "idleReplicaCount", "fallback"}
    assert set(spec) <= known, f"unknown ScaledObject fields: {set(spec) - known}"
    target = _map(spec, "scaleTargetRef")
    assert target == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": _text(statefulset, "metadata", "name"),
    }
    triggers = _maps(spec, "triggers")
    assert [_text(t, "type") for t in triggers] == ["kafka"]
    meta = _map(triggers[0], "metadata")
    assert meta["topic"] == settings["MODEL_TRAINER_COMMANDS_TOPIC"] == "trainer.jobs"
    assert meta["consumerGroup"] == settings["MODEL_TRAINER_GROUP_ID"] == "model-trainer"
    assert meta["bootstrapServers"] == settings["MODEL_TRAINER_BOOTSTRAP_SERVERS"]
    # Lag counts queued and running jobs: one pod per `workers` unfinished jobs.
    assert int(_text(meta, "lagThreshold")) == int(settings["MODEL_TRAINER_WORKERS"])
    assert meta["offsetResetPolicy"] == "earliest"
    partitions = int(settings["MODEL_TRAINER_TOPIC_PARTITIONS"])
    assert partitions == Settings.model_fields["topic_partitions"].default == 4
    assert 1 <= _int(spec, "minReplicaCount") <= _int(spec, "maxReplicaCount") <= partitions
    assert "replicas" not in _map(statefulset, "spec"), "the autoscaler owns replicas"


def _component_patch(component: str, kind: str) -> list[dict[str, object]]:
    text = (K8S / "components" / component / "kustomization.yaml").read_text()
    for patch in _maps(yaml.safe_load(text), "patches"):
        if _text(patch, "target", "kind") == kind:
            return _maps(yaml.safe_load(_text(patch, "patch")))
    raise AssertionError(f"components/{component} does not patch the {kind}")


def test_scaled_object() -> None:
    base = _base()
    scaled = _documents((K8S / "components" / "keda" / "scaledobject.yaml").read_text())[0]
    statefulset = dict(base["StatefulSet"])
    # The component removes `replicas` (its only patch), as kubectl kustomize would.
    assert _component_patch("keda", "StatefulSet") == [{"op": "remove", "path": "/spec/replicas"}]
    statefulset["spec"] = {k: v for k, v in _map(statefulset, "spec").items() if k != "replicas"}
    _check_scaled_object(scaled, statefulset, base["ConfigMap"])


def test_gpu_component_asks_for_an_nvidia_gpu_and_the_cuda_image() -> None:
    text = (K8S / "components" / "gpu" / "kustomization.yaml").read_text()
    images = _maps(yaml.safe_load(text), "images")
    assert images == [{"name": "model-trainer", "newTag": "cuda"}]
    ops = _component_patch("gpu", "StatefulSet")
    gpu = [op for op in ops if str(op["path"]).endswith("/resources/limits/nvidia.com~1gpu")]
    assert [op["value"] for op in gpu] == ["1"]


# ------------------------------------------------------------------ built with kubectl


def _built(directory: Path) -> list[dict[str, object]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomizations were checked file by file")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return _documents(done.stdout)


@pytest.mark.parametrize(
    "directory",
    _kustomizations("Kustomization"),
    ids=lambda d: str(Path(d).relative_to(K8S)) or ".",
)
def test_every_variant_builds_valid(directory: Path) -> None:
    objects = _by_kind(_built(directory))
    for kind, doc in objects.items():
        if kind not in CRD_KINDS:
            _validate(doc, f"kubectl kustomize {directory.relative_to(K8S)}")
    statefulset, configmap = objects["StatefulSet"], objects["ConfigMap"]
    _check_resources(statefulset, configmap)
    if "ScaledObject" in objects:
        _check_scaled_object(objects["ScaledObject"], statefulset, configmap)
    else:
        assert _int(statefulset, "spec", "replicas") >= 1
    container = _container(statefulset)
    gpus = _map(container, "resources", "limits").get("nvidia.com/gpu")
    assert (gpus is not None) == _text(container, "image").endswith(":cuda")


def test_object_storage_overlay_needs_no_rwx_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = _by_kind(_built(K8S / "overlays" / "object-storage"))
    assert "PersistentVolumeClaim" not in objects
    statefulset, configmap = objects["StatefulSet"], objects["ConfigMap"]
    volumes = _maps(statefulset, "spec", "template", "spec", "volumes")
    assert not [v for v in volumes if "persistentVolumeClaim" in v]
    settings = _settings_map(configmap)
    assert not [k for k in settings if "SECRET" in k or "KEY" in k], "credentials in a ConfigMap"
    sources = _maps(_container(statefulset), "envFrom")
    secret = [s for s in sources if "secretRef" in s]
    assert [_map(s, "secretRef") for s in secret] == [
        {"name": "model-trainer-s3", "optional": True}
    ]
    account = _text(statefulset, "spec", "template", "spec", "serviceAccountName")
    assert _text(objects["ServiceAccount"], "metadata", "name") == account
    for name, value in settings.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    assert (Settings().artifacts_url or "").startswith("s3://")


# ------------------------------------------------------------------ the image


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def test_image_builds_the_cpu_flavour_by_default() -> None:
    flavours = [a for k, a in _instructions() if k == "ARG" and a.startswith("TORCH_FLAVOUR")]
    assert flavours, "TORCH_FLAVOUR is a build argument"
    assert all(a == "TORCH_FLAVOUR=cpu" for a in flavours)
    assert torch_flavour.FLAVOURS == ("cpu", "cuda")


def test_image_is_multi_stage_and_runs_unprivileged() -> None:
    stages = _stages()
    assert len([s for s in stages if any(k == "RUN" for k, _ in s)]) >= 2, "build and runtime"
    runtime = stages[-1]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(k == "COPY" and a.startswith("--from=build /app/.venv") for k, a in runtime)
    assert not any(k == "COPY" and " service" in a for k, a in runtime), "no sources at run"


def test_image_has_a_healthcheck_on_healthz() -> None:
    checks = [args for keyword, args in _stages()[-1] if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert "MODEL_TRAINER_HTTP_PORT" in checks[0]


def test_image_installs_with_uv_cache_and_bytecode() -> None:
    text = DOCKERFILE.read_text()
    assert "--mount=type=cache,target=/root/.cache/uv" in text
    assert "UV_COMPILE_BYTECODE=1" in text
    uv_image = re.search(r"^FROM ghcr\.io/astral-sh/uv:(\S+) AS uv$", text, re.M)
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert uv_image is not None
    assert makefile is not None
    assert uv_image[1] == makefile[1], "one uv version everywhere"
    assert 'ENTRYPOINT ["model-trainer-entrypoint"]' in text


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_environment_history_and_caches_out() -> None:
    patterns = _dockerignore()
    assert not [p for p in patterns if p.startswith("!")]
    for needed in [".venv", ".git", ".demo", "**/__pycache__", ".mypy_cache", ".ruff_cache"]:
        assert needed in patterns, needed
    assert ".pytest_cache" in patterns
    assert "artifacts" in patterns


def test_dockerignore_keeps_what_the_image_copies() -> None:
    patterns = _dockerignore()
    sources: list[str] = []
    for keyword, args in _instructions():
        if keyword == "COPY" and "--from=" not in args:
            sources.extend(a for a in args.split()[:-1] if not a.startswith("--"))
    assert {"pyproject.toml", "uv.lock", "service", "deploy/entrypoint.sh"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        parts = Path(source).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hits = [p for p in patterns for prefix in prefixes if fnmatch.fnmatch(prefix, p)]
        assert not hits, f".dockerignore drops {source} ({hits})"


def _run_entrypoint(tmp_path: Path, env: dict[str, str]) -> str:
    fake = tmp_path / "model-trainer"
    fake.write_text('#!/bin/sh\necho "$MODEL_TRAINER_INSTANCE_ID $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "serve"],
        env={"PATH": f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def test_entrypoint_takes_the_instance_id_from_the_host_name(tmp_path: Path) -> None:
    assert _run_entrypoint(tmp_path, {"HOSTNAME": "3f2c9a1b7d4e"}) == "3f2c9a1b7d4e serve\n"
    assert _run_entrypoint(tmp_path, {}) == f"{socket.gethostname()} serve\n"
    pinned = {"HOSTNAME": "3f2c9a1b7d4e", "MODEL_TRAINER_INSTANCE_ID": "model-trainer-0"}
    assert _run_entrypoint(tmp_path, pinned) == "model-trainer-0 serve\n"


# ------------------------------------------------------------------ torch flavours


def _toml(name: str) -> dict[str, object]:
    return tomllib.loads((ROOT / name).read_text())


def test_cpu_flavour_leaves_out_torch_and_only_its_gpu_runtime() -> None:
    lock = _toml("uv.lock")
    excluded = set(torch_flavour.excluded(lock, "cpu"))
    locked = {_text(p, "name") for p in _maps(lock, "package")}
    gpu_runtime = {n for n in locked if n == "triton" or n.startswith(("nvidia-", "cuda-"))}
    assert gpu_runtime, "uv.lock's torch should pull in the CUDA runtime"
    assert excluded == gpu_runtime | {"torch"}
    assert torch_flavour.excluded(lock, "cuda") == []
    with pytest.raises(ValueError, match="unknown torch flavour"):
        torch_flavour.excluded(lock, "rocm")


def test_cpu_index_is_declared_explicit_and_locks_nothing() -> None:
    pyproject = _toml("pyproject.toml")
    indexes = _maps(pyproject, "tool", "uv", "index")
    cpu = [i for i in indexes if i.get("name") == torch_flavour.CPU_INDEX]
    assert cpu == [
        {"name": "pytorch-cpu", "url": "https://download.pytorch.org/whl/cpu", "explicit": True}
    ]
    sources = _map(pyproject, "tool", "uv", "sources")
    assert all("index" not in _map(source) for source in sources.values())
    assert "download.pytorch.org" not in (ROOT / "uv.lock").read_text()
    assert torch_flavour.index_url(pyproject) == "https://download.pytorch.org/whl/cpu"


def test_cpu_requirement_is_the_locked_torch(capsys: pytest.CaptureFixture[str]) -> None:
    version = torch_flavour.locked_version(_toml("uv.lock"), "torch")
    assert torch_flavour.main(["requirement"]) == 0
    assert capsys.readouterr().out == f"torch=={version}+cpu\n"
    assert torch_flavour.main(["exclude", "cpu"]) == 0
    assert "torch" in capsys.readouterr().out.split()
