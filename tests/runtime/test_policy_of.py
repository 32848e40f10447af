"""The book's policy is the service's settings: each field the setting of its name, but for
the few the shell derives (worker count, resolved roots, the tenancy)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from model_trainer.book.effects import Policy
from model_trainer.settings import Settings
from model_trainer.shell.journal import policy_of

DERIVED = ("slots", "data_root", "artifacts_root", "tenants", "admin_tenant")


def test_every_policy_field_is_its_setting_or_derived_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        commands_topic="c",
        events_topic="e",
        state_topic="s",
        dead_letter_topic="d",
        workers=3,
        max_running_per_user=2,
        max_progress_per_s=7.5,
        state_retention_s=11.0,
        state_every_s=0.0,
        max_attempts=4,
        cancel_grace_s=1.5,
        stall_timeout_s=9.0,
        checkpoint_every=17,
        data_root=tmp_path / "data" / ".." / "corpora",
        artifacts_root=Path("relative-artifacts"),
        max_corpus_bytes=123,
        max_command_bytes=4096,
        default_timeout_s=None,
        artifacts_url="s3://bucket/prefix",
        storage_retry_s=5.0,
        disk_full_retry_s=6.0,
        tenants="bob,alice",
        admin_tenant="alice",
    )
    policy = policy_of(settings)
    named = [f.name for f in fields(Policy) if f.name not in DERIVED]
    assert [(name, getattr(policy, name)) for name in named] == [
        (name, getattr(settings, name)) for name in named
    ]
    assert [getattr(policy, name) for name in DERIVED] == [
        3,
        (tmp_path / "corpora").resolve(),
        Path("relative-artifacts").resolve(),
        ("bob", "alice"),
        "alice",
    ]
    # The policy takes settings that differ from its own defaults, not its defaults.
    assert (policy.commands_topic, policy.default_timeout_s) == ("c", None)
    assert policy.handback_grace_s == settings.handback_grace_s
