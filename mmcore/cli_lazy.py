"""A click group whose heavy commands and plugin commands are imported only when one of them runs.

``mmcore --help``, ``mmcore --version`` and top-level shell completion read command names and one-line helps
from :data:`LAZY_COMMANDS`, so they return without importing torch or loading plugins. Commands that plugins add
(hook ``mmcore_register_commands``) are looked up only when a name is not one of mmcore's own.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
from click.shell_completion import CompletionItem

# name -> (module:attribute, one-line help shown by --help and completion)
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("mmcore.cli_data:data", "Prepare data: features, TSVs, stores, hard negatives."),
    "report": ("mmcore.cli_report:report", "Compare runs: one table, plots, paired differences."),
    "inspect": ("mmcore.cli_inspect:inspect", "One example's answers and caption after each stage."),
    "evaluate": ("mmcore.cli_evaluate:evaluate", "Evaluate a run's or a checkpoint's model on a view."),
    "export": ("mmcore.cli_export:export", "Export a run's model for transformers (Hugging Face)."),
    "schema": ("mmcore.cli_schema:schema", "Print the recipe JSON Schema (keys, types, defaults; plugin options)."),
}


class LazyGroup(click.Group):
    """A group that imports :data:`LAZY_COMMANDS` on demand and asks plugins only for names it does not know."""

    _plugins_asked = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Own and lazy command names (plugin commands are not listed: listing them would load every plugin)."""
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command called ``cmd_name``: own, lazy (imported now), else one a plugin adds."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        if cmd_name in LAZY_COMMANDS:
            target, _ = LAZY_COMMANDS[cmd_name]
            module, _, attribute = target.partition(":")
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)
            return command
        if not self._plugins_asked:
            self._plugins_asked = True
            self.register_plugin_commands()
            return super().get_command(ctx, cmd_name)
        return None

    def register_plugin_commands(self) -> None:
        """Let plugins add their commands (hook ``mmcore_register_commands``)."""
        from mmcore.errors import MMCoreError
        from mmcore.plugins import load_plugins

        try:
            plugins = load_plugins()
        except MMCoreError:
            return  # reported by whichever command loads plugins for real
        plugins.hook.mmcore_register_commands(cli=self)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands section of ``--help``, without importing the lazy ones."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)  # as click lays its commands out
        rows = []
        for name in names:
            help_text = self._short_help(ctx, name, limit)
            if help_text is not None:
                rows.append((name, help_text))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """Complete command names from the table (no imports), then the group's own options."""
        items = [CompletionItem(name, help=self._short_help(ctx, name)) for name in self.list_commands(ctx)
                 if name.startswith(incomplete) and self._short_help(ctx, name) is not None]
        return items + list(click.Command.shell_complete(self, ctx, incomplete))

    def _short_help(self, ctx: click.Context, name: str, limit: int = 80) -> str | None:
        """A command's one-line help (None for a hidden one), from the table for a lazy one."""
        if name in self.commands:
            command = self.commands[name]
            return None if command.hidden else command.get_short_help_str(limit=limit)
        entry: Any = LAZY_COMMANDS.get(name)
        return entry[1] if entry else None
