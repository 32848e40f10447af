"""The README documents every setting the service reads."""

from __future__ import annotations

from pathlib import Path

from model_trainer.settings import ENV_PREFIX, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [
        f"{ENV_PREFIX}{name.upper()}"
        for name in Settings.model_fields
        if f"`{ENV_PREFIX}{name.upper()}`" not in text
    ]
    assert not missing, f"README lacks these settings: {missing}"
