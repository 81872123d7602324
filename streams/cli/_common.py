"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

from typing import Any

import click

from streaminfer.errors import ConfigError
from streaminfer.streams.settings import Settings, load_settings

__all__ = ["settings_from"]


def settings_from(ctx: click.Context, **extra: Any) -> Settings:
    """Settings from env + global flags (``ctx.obj``) + this command's flags.

    Bad configuration stops the command at start with the field's name.
    """
    try:
        return load_settings(**{**(ctx.obj or {}), **extra})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
