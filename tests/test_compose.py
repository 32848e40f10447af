"""docker-compose.yml agrees with the service's settings (Docker does not run in CI)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from model_trainer.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, dict[str, dict[str, object]]]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _env(service: str) -> dict[str, str]:
    env = _compose()["services"][service]["environment"]
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def test_every_variable_is_a_setting() -> None:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    unknown = set(_env("model-trainer")) - known
    assert not unknown, f"compose sets variables the service never reads: {sorted(unknown)}"


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
    }
    assert created == used
    defaults = Settings()
    assert used == {
        defaults.commands_topic,
        defaults.events_topic,
        defaults.dead_letter_topic,
        defaults.state_topic,
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
