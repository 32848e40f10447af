"""docker-compose.yml and compose.gpu.yaml agree with the service's settings and the image
(parsed as YAML: Docker does not run in CI)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from model_trainer.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent


def _compose(name: str = "docker-compose.yml") -> dict[str, dict[str, dict[str, object]]]:
    loaded = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def _env(service: str, name: str = "docker-compose.yml") -> dict[str, str]:
    env = _compose(name)["services"][service]["environment"]
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def _trainer(name: str = "docker-compose.yml") -> dict[str, object]:
    return _compose(name)["services"]["model-trainer"]


def _seconds(duration: object) -> float:
    match = re.fullmatch(r"(\d+)s", str(duration))
    assert match is not None, f"expected a duration in seconds: {duration!r}"
    return float(match[1])


def test_every_variable_is_a_setting() -> None:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    for name in ("docker-compose.yml", "compose.gpu.yaml"):
        unknown = set(_env("model-trainer", name)) - known
        assert not unknown, f"{name} sets variables the service never reads: {sorted(unknown)}"


def test_topics_created_are_the_topics_the_service_uses() -> None:
    env = _env("model-trainer")
    command = _compose()["services"]["topics"]["command"]
    assert isinstance(command, list)
    created = set(re.findall(r"^\s*create (\S+)", str(command[0]), flags=re.MULTILINE))
    used = {
        env["MODEL_TRAINER_COMMANDS_TOPIC"],
        env["MODEL_TRAINER_EVENTS_TOPIC"],
        env["MODEL_TRAINER_DEAD_LETTER_TOPIC"],
        env["MODEL_TRAINER_STATE_TOPIC"],
        env["MODEL_TRAINER_LOGS_TOPIC"],
    }
    assert created == used
    defaults = Settings()
    assert used == {
        defaults.commands_topic,
        defaults.events_topic,
        defaults.dead_letter_topic,
        defaults.state_topic,
        defaults.logs_topic,
    }
    assert "create trainer.jobs.state --config cleanup.policy=compact" in str(command[0])


def test_ports_agree() -> None:
    env = _env("model-trainer")
    kafka_env = _env("kafka")
    host, port = env["MODEL_TRAINER_BOOTSTRAP_SERVERS"].split(":")
    assert f"INTERNAL://{host}:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert f"INTERNAL://:{port}" in kafka_env["KAFKA_LISTENERS"]
    http_port = env["MODEL_TRAINER_HTTP_PORT"]
    ports = _compose()["services"]["model-trainer"]["ports"]
    assert isinstance(ports, list)
    assert any(str(p).endswith(f":{http_port}") for p in ports)
    assert "EXPOSE 8080" in (ROOT / "deploy" / "Dockerfile").read_text()


def test_settings_parse_the_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env("model-trainer").items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.bootstrap_servers == "kafka:29092"
    assert settings.create_topics is False
    assert str(settings.artifacts_root) == "/artifacts"


def test_no_fixed_instance_id_so_scaled_replicas_do_not_fence_each_other() -> None:
    # The image's entrypoint takes the container's host name (tests/test_deploy.py runs it).
    for name in ("docker-compose.yml", "compose.gpu.yaml"):
        assert "MODEL_TRAINER_INSTANCE_ID" not in _env("model-trainer", name)
    entrypoint = (ROOT / "deploy" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["model-trainer-entrypoint"]' in entrypoint
    # Scaled replicas cannot all publish one host port: a range gives each its own.
    ports = _trainer()["ports"]
    assert isinstance(ports, list)
    assert all(re.fullmatch(r"(\$\{[^}]+\}:)?\d+-\d+:\d+", str(p)) for p in ports)


def test_artifacts_are_a_bind_mount_the_host_can_open() -> None:
    env = _env("model-trainer")
    volumes = _trainer()["volumes"]
    assert isinstance(volumes, list)
    mounts = {str(v["target"]): v for v in volumes if isinstance(v, dict)}
    artifacts = mounts[env["MODEL_TRAINER_ARTIFACTS_ROOT"]]
    assert artifacts["type"] == "bind"
    assert artifacts["source"] == "./artifacts"
    assert (ROOT / "artifacts" / ".gitkeep").is_file(), "exists, owned by whoever cloned"
    assert "volumes" not in _compose(), "no named volumes"
    # Runs as the host user (overridable), so the files it writes are the user's.
    user = str(_trainer()["user"])
    assert user == "${HOST_UID:-1000}:${HOST_GID:-1000}"


def test_restart_policy_and_drain_time() -> None:
    assert _trainer()["restart"] == "unless-stopped"
    assert _compose()["services"]["kafka"]["restart"] == "unless-stopped"
    grace = float(_env("model-trainer")["MODEL_TRAINER_SHUTDOWN_GRACE_S"])
    # After the grace the service still closes its consumer (5 s) and pool (2 s).
    assert _seconds(_trainer()["stop_grace_period"]) >= grace + 10


def test_builds_the_cpu_flavour_and_the_gpu_override_the_cuda_one() -> None:
    build = _trainer()["build"]
    gpu_build = _trainer("compose.gpu.yaml")["build"]
    assert isinstance(build, dict)
    assert isinstance(gpu_build, dict)
    assert build["args"] == {"TORCH_FLAVOUR": "cpu"}
    assert gpu_build["args"] == {"TORCH_FLAVOUR": "cuda"}
    assert _trainer()["image"] == "model-trainer:cpu"
    assert _trainer("compose.gpu.yaml")["image"] == "model-trainer:cuda"


def test_gpu_override_reserves_an_nvidia_device() -> None:
    deploy = _trainer("compose.gpu.yaml")["deploy"]
    assert isinstance(deploy, dict)
    devices = deploy["resources"]["reservations"]["devices"]
    assert isinstance(devices, list)
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert set(_compose("compose.gpu.yaml")["services"]) == {"model-trainer"}


def test_mlflow_is_an_optional_profile_at_the_pinned_version() -> None:
    mlflow = _compose()["services"]["mlflow"]
    assert mlflow["profiles"] == ["mlflow"]
    lock = (ROOT / "uv.lock").read_text()
    pinned = re.search(r'name = "mlflow"\nversion = "([^"]+)"', lock)
    assert pinned is not None
    assert mlflow["image"] == f"ghcr.io/mlflow/mlflow:v{pinned[1]}"
    command = mlflow["command"]
    assert isinstance(command, list)
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in command
    assert mlflow["ports"] == ["${MODEL_TRAINER_PUBLISH_ADDRESS:-127.0.0.1}:5000:5000"]


def test_published_ports_listen_on_loopback_unless_told() -> None:
    for name in ("docker-compose.yml", "compose.gpu.yaml"):
        for service, spec in _compose(name)["services"].items():
            ports = spec.get("ports") or []
            assert isinstance(ports, list)
            for port in ports:
                assert str(port).startswith("${MODEL_TRAINER_PUBLISH_ADDRESS:-127.0.0.1}:"), (
                    f"{name}: {service} publishes {port} on every interface"
                )


def test_s3_override_points_the_service_at_its_s3_server(monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = _compose("compose.s3.yaml")["services"]["s3"]
    server = s3["environment"]
    assert isinstance(server, dict)
    trainer = _env("model-trainer", "compose.s3.yaml")
    assert trainer["AWS_ENDPOINT_URL"] == "http://s3:8333"
    assert (trainer["AWS_ACCESS_KEY_ID"], trainer["AWS_SECRET_ACCESS_KEY"]) == (
        server["AWS_ACCESS_KEY_ID"],
        server["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = str(server["S3_BUCKET"])
    monkeypatch.setenv("MODEL_TRAINER_ARTIFACTS_URL", trainer["MODEL_TRAINER_ARTIFACTS_URL"])
    assert Settings().artifacts_url == f"s3://{bucket}/artifacts"
    command = s3["command"]
    assert isinstance(command, list)
    assert command[0] == "mini"
    assert "-ip=s3" in command
