"""A recipe file made ready for a command: read with its ``--set`` overrides, its plugins loaded, validated."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mmcore.errors import MMCoreError, PluginError
from mmcore.plugins import load_plugins  # pluggy and the registry only: plugins load when it is called

if TYPE_CHECKING:
    from mmcore.plugins import Plugins
    from mmcore.recipe import Recipe


def recipe_plugin_paths(recipe: Recipe) -> list[Path]:
    """The recipe's ``plugins:`` files, resolved relative to the file that named them; missing ones are errors."""
    items = recipe.data.get("plugins") or []
    if not isinstance(items, list):
        raise recipe.error(("plugins",), "plugins must be a list of .py files")
    paths = []
    for index, item in enumerate(items):
        key = ("plugins", str(index))
        origin = recipe.where(key)[0]
        base = Path(origin).parent if not origin.startswith("--set") else Path.cwd()
        path = Path(str(item)).expanduser()
        path = path if path.is_absolute() else (base / path).resolve()
        if not path.is_file():
            raise recipe.error(key, f"plugin file not found: {item}")
        paths.append(path)
    return paths


def _locate_plugin_error(exc: PluginError, recipe: Recipe, paths: list[Path]) -> MMCoreError:
    """A recipe plugin that failed to load: the error located at its ``plugins:`` entry and at the plugin's line."""
    for index, path in enumerate(paths):
        if str(path) not in str(exc):
            continue
        cause = exc.__cause__
        if cause is None:
            return recipe.error(("plugins", str(index)), str(exc))
        # SyntaxError's text already names the file and line; otherwise the plugin's deepest frame does.
        lines = [] if isinstance(cause, SyntaxError) else [
            frame.lineno for frame in traceback.extract_tb(cause.__traceback__) if frame.filename == str(path)]
        at = f" (at {path.name}:{lines[-1]})" if lines else ""
        return recipe.error(("plugins", str(index)),
                            f"plugin file {path} failed to import: {type(cause).__name__}: {cause}{at}")
    return exc


def prepare_recipe(path: str | Path, overrides: tuple[str, ...] = (),
                   loggers: tuple[str, ...] = ()) -> tuple[Recipe, Plugins, dict[str, Any]]:
    """Load a recipe, load the plugins it names, validate it: (recipe, plugins, resolved). ``loggers``
    (``--logger``) are added to the recipe's ``loggers`` with their default options, unless it names them."""
    from mmcore.loggers import enable_loggers
    from mmcore.recipe import load_recipe
    from mmcore.validate import resolve

    recipe = load_recipe(path, overrides)
    enable_loggers(recipe, loggers)
    plugin_paths = recipe_plugin_paths(recipe)
    try:
        plugins = load_plugins(plugin_paths)
    except PluginError as exc:
        raise _locate_plugin_error(exc, recipe, plugin_paths) from None
    resolved = resolve(recipe, plugins.registry)
    resolved["plugins"] = [str(p) for p in plugin_paths]
    return recipe, plugins, resolved


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a recipe value, e.g. --set stages.token.epochs=2 (repeatable); a mapping "
                               "value merges key by key (--set backbone={hidden_size: 64}), KEY:=VALUE replaces.")
