"""The Kafka connection options of every client command, declared once.

:func:`connection_options` puts them on a command (``model-trainer submit -b host job.json``,
as before: the options stay with each command rather than moving to the program's callback,
where they would have to come before the command's name) and hands the command one
:class:`ConnectionOverrides`. A leaf of the command modules.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Concatenate, ParamSpec, TypeVar

import typer

from .settings import ConnectionOverrides

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _option(name: str, annotation: object) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


# Each option wins over its MODEL_TRAINER_KAFKA_* variable. The password has no option (a
# command line is visible to every user of the machine): it is MODEL_TRAINER_KAFKA_SASL_PASSWORD.
CONNECTION = "Kafka connection (default: the MODEL_TRAINER_KAFKA_* variables)"
_OPTIONS = (
    _option(
        "bootstrap_servers",
        Annotated[
            str | None,
            typer.Option(
                "--bootstrap-servers",
                "-b",
                help="Default: MODEL_TRAINER_BOOTSTRAP_SERVERS, KAFKA_BOOTSTRAP_SERVERS, "
                "127.0.0.1:9092.",
            ),
        ],
    ),
    _option(
        "security_protocol",
        Annotated[
            str | None,
            typer.Option(
                help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default: PLAINTEXT).",
                rich_help_panel=CONNECTION,
            ),
        ],
    ),
    _option(
        "sasl_mechanism",
        Annotated[
            str | None,
            typer.Option(
                help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default: PLAIN). The password: "
                "MODEL_TRAINER_KAFKA_SASL_PASSWORD.",
                rich_help_panel=CONNECTION,
            ),
        ],
    ),
    _option(
        "sasl_username",
        Annotated[
            str | None,
            typer.Option(help="SASL user (or API key).", rich_help_panel=CONNECTION),
        ],
    ),
    _option(
        "ssl_cafile",
        Annotated[
            Path | None,
            typer.Option(
                help="PEM CA certificate(s) to trust (default: the system's CAs).",
                dir_okay=False,
                rich_help_panel=CONNECTION,
            ),
        ],
    ),
    _option(
        "ssl_certfile",
        Annotated[
            Path | None,
            typer.Option(
                help="PEM client certificate (mutual TLS).",
                dir_okay=False,
                rich_help_panel=CONNECTION,
            ),
        ],
    ),
    _option(
        "ssl_keyfile",
        Annotated[
            Path | None,
            typer.Option(
                help="PEM key of the client certificate.",
                dir_okay=False,
                rich_help_panel=CONNECTION,
            ),
        ],
    ),
    _option(
        "ssl_check_hostname",
        Annotated[
            bool | None,
            typer.Option(
                "--ssl-check-hostname/--no-ssl-check-hostname",
                help="Check that the broker's certificate names its host (default: on).",
                show_default=False,
                rich_help_panel=CONNECTION,
            ),
        ],
    ),
)


def _take(options: dict[str, object], name: str, kind: type[T]) -> T | None:
    """Option ``name`` out of ``options`` (so that the command does not receive it)."""
    value = options.pop(name, None)
    if value is None or isinstance(value, kind):
        return value
    raise TypeError(f"--{name.replace('_', '-')}: {value!r} is not a {kind.__name__}")


def _overrides(options: dict[str, object]) -> ConnectionOverrides:
    return ConnectionOverrides(
        bootstrap_servers=_take(options, "bootstrap_servers", str),
        security_protocol=_take(options, "security_protocol", str),
        sasl_mechanism=_take(options, "sasl_mechanism", str),
        sasl_username=_take(options, "sasl_username", str),
        ssl_cafile=_take(options, "ssl_cafile", Path),
        ssl_certfile=_take(options, "ssl_certfile", Path),
        ssl_keyfile=_take(options, "ssl_keyfile", Path),
        ssl_check_hostname=_take(options, "ssl_check_hostname", bool),
    )


def connection_options(
    command: Callable[Concatenate[ConnectionOverrides, P], R],
) -> Callable[P, R]:
    """``command`` with the connection options instead of its first parameter (for typer,
    which reads the signature: keyword-only, after the command's own options); it is called
    with them as one ConnectionOverrides. Called without them, it gets empty overrides."""

    @functools.wraps(command)
    def with_connection(*args: P.args, **kwargs: P.kwargs) -> R:
        return command(_overrides(kwargs), *args, **kwargs)

    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    keyword_only = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
    others = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    # Keyword-only, the options can follow every other parameter, defaults or not.
    parameters = [*others, *_OPTIONS, *keyword_only]
    # typer reads the signature; functools.wraps' type has no such attribute to assign.
    setattr(with_connection, "__signature__", inspect.Signature(parameters))  # noqa: B010
    with_connection.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_connection
