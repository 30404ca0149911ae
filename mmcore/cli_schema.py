"""``mmcore schema``: print the recipe JSON Schema, for editors that complete and check YAML against one."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="schema")
@click.option("--core", is_flag=True, help="Leave plugin options open instead of spelling out the installed "
                                           "plugins' names and option types.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the schema to this file (atomically) instead of printing it.")
def schema(core: bool, output: Path | None) -> None:
    """Print the JSON Schema (draft 2020-12) of a recipe: every key with its type, default and help, and the
    installed plugins' tasks, heads, datasets, backbones and loggers with their options' types.

    Point an editor at it, e.g. with the YAML language server: a first line
    "# yaml-language-server: $schema=recipe.schema.json" after mmcore schema -o recipe.schema.json.
    """
    from mmcore.schema.json_schema import recipe_schema

    registry = None
    if not core:
        from mmcore.plugins import load_plugins

        registry = load_plugins().registry
    text = json.dumps(recipe_schema(registry), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    from mmcore.rundir import atomic_write_text

    atomic_write_text(output, text)
    click.echo(output)
