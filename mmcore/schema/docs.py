"""``docs/recipe-keys.md``: one table per recipe section, generated from :mod:`mmcore.schema.keys`.

``python -m mmcore.schema.docs docs/recipe-keys.md`` rewrites the page (atomically); a test fails when the
committed page differs from what the declarations generate.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmcore.schema.keys import INCLUDE, SECTIONS, TOP, Key, Section
from mmcore.schema.types import label

COMMAND = "python -m mmcore.schema.docs docs/recipe-keys.md"
# Where each section sits in a recipe, for the page's headings.
PLACES = {"recipe": "top level", "stage": "stages[]", "task": "stages[].tasks.<task>", "data": "...data",
          "optim": "stages[].optim", "finetune optim": "finetune[].optim", "select": "finetune[].select",
          "finetune": "finetune[]", "zero_shot": "zero_shot[]"}


def markdown() -> str:
    """The whole page."""
    out = ["# Recipe keys", "",
           f"<!-- Generated from mmcore/schema/keys.py by `{COMMAND}`; do not edit by hand. -->", "",
           "Every key a recipe may write, with its type, its default and what it does. `mmcore show RECIPE` prints a "
           "recipe with every default filled in; `mmcore schema` prints the same declarations as a JSON Schema for "
           "editor completion, with the installed plugins' options (`mmcore describe NAME` lists one plugin's).",
           "", "For an editor with the YAML language server, write the schema once with "
           "`mmcore schema -o recipe.schema.json` and start a recipe with "
           "`# yaml-language-server: $schema=recipe.schema.json` (a path relative to the recipe).", ""]
    for section in SECTIONS.values():
        out += _table(section)
    return "\n".join(out)


def _table(section: Section) -> list[str]:
    keys = [INCLUDE, *section.keys.values()] if section is TOP else list(section.keys.values())
    rows = [f"## {section.name} (`{PLACES.get(section.name, section.name)}`)", "", section.help[0].upper() +
            section.help[1:] + ".", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    rows += [_row(key) for key in keys]
    return [*rows, ""]


def _row(key: Key) -> str:
    kind = f"list of {key.section}" if key.many else key.section or label(key.type) + _bounds(key)
    if key.plugins:
        kind = f"{key.plugins} options" if key.plugins in ("head", "backbone") else f"{key.plugins} name -> options"
    cells = [f"`{key.name}`", kind, key.default_text(), key.help]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _bounds(key: Key) -> str:
    """`` ≥ 1``, `` > 0``, `` in [0, 1]``: the range validation enforces."""
    if key.minimum is None:
        return ""
    low = f"{key.minimum:g}"
    if key.maximum is not None:
        return f" in {'(' if key.exclusive else '['}{low}, {key.maximum:g}]"
    return f" {'>' if key.exclusive else '≥'} {low}"


def main(argv: list[str]) -> None:
    """Write the page to the path given (default docs/recipe-keys.md)."""
    from mmcore.rundir import atomic_write_text

    atomic_write_text(Path(argv[0] if argv else "docs/recipe-keys.md"), markdown() + "\n")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
