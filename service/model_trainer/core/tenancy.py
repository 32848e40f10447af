"""Tenants: who sent a command is told by the topic it came on, never by its payload.

Each tenant has its own commands topic, ``<commands_topic>.<tenant>``, that only its Kafka
principal may write (the broker's ACLs enforce it); the plain commands topic is the
``default`` tenant's, so a deployment without tenants works as before. A non-default
tenant's artifacts and checkpoints live in ``<artifacts_root>/.tenants/<tenant>/`` (a folder
name no job id can take: job ids start with a letter or digit), so a job id reused by
another tenant never reaches them. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TENANT = "default"
TENANTS_DIR = ".tenants"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # no dot: it splits the topic name


@dataclass(frozen=True)
class Tenancy:
    """The tenants a service serves, and which of them may cancel any job."""

    commands_topic: str
    tenants: tuple[str, ...] = ()
    admin: str | None = None

    def __post_init__(self) -> None:
        for name in (*self.tenants, *([self.admin] if self.admin else [])):
            if not TENANT_PATTERN.match(name) or name == DEFAULT_TENANT:
                raise ValueError(
                    f"tenant {name!r}: lowercase letters, digits, '_' and '-' (not 'default')"
                )

    @property
    def names(self) -> tuple[str, ...]:
        """Every tenant with a topic of its own (the admin included)."""
        extra = (self.admin,) if self.admin and self.admin not in self.tenants else ()
        return (*self.tenants, *extra)

    def topic(self, tenant: str) -> str:
        return (
            self.commands_topic if tenant == DEFAULT_TENANT else f"{self.commands_topic}.{tenant}"
        )

    def topics(self) -> list[str]:
        """The commands topics the service reads: the default one, then each tenant's."""
        return [self.commands_topic, *(self.topic(name) for name in self.names)]

    def tenant_of(self, topic: str) -> str | None:
        """The tenant whose topic ``topic`` is (None: no tenant's)."""
        if topic == self.commands_topic:
            return DEFAULT_TENANT
        prefix = f"{self.commands_topic}."
        name = topic[len(prefix) :] if topic.startswith(prefix) else None
        return name if name is not None and name in self.names else None

    def may_cancel(self, tenant: str, owner: str) -> bool:
        return tenant == owner or (self.admin is not None and tenant == self.admin)


def tenant_root(artifacts_root: Path, tenant: str) -> Path:
    """Where ``tenant``'s job folders live."""
    return artifacts_root if tenant == DEFAULT_TENANT else artifacts_root / TENANTS_DIR / tenant


def tenant_url(artifacts_url: str | None, tenant: str) -> str | None:
    """``tenant``'s prefix in object storage, laid out as :func:`tenant_root`."""
    if artifacts_url is None or tenant == DEFAULT_TENANT:
        return artifacts_url
    return f"{artifacts_url.rstrip('/')}/{TENANTS_DIR}/{tenant}"
