"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

from typing import Any

import click

from streaminfer.errors import ConfigError
from streaminfer.streams.settings import Settings, load_settings

__all__ = ["kafka_config", "settings_from"]


def settings_from(ctx: click.Context, **extra: Any) -> Settings:
    """Settings from env + global flags (``ctx.obj``) + this command's flags.

    Bad configuration stops the command at start with the field's name.
    """
    try:
        return load_settings(**{**(ctx.obj or {}), **extra})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def kafka_config(settings: Settings) -> dict[str, Any]:
    """``settings.kafka_config()``, once the brokers accepted its login and TLS: a wrong
    password stops the command at once, with the reason, instead of hanging it."""
    from streaminfer.connectors.admin import check_credentials

    config = settings.kafka_config()
    try:
        check_credentials(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return config
