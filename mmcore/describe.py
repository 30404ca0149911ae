"""What a registered plugin accepts: each option with its type and default, for ``mmcore list-*``, ``mmcore
describe`` and the generated tables of ``docs/plugins.md``.

An option's type is the one its plugin declares (``option_types``), else its default's: the type the recipe
checker enforces (see :mod:`mmcore.schema.types`).
``python -m mmcore.describe docs/plugins.md`` rewrites the page's generated section from the installed
built-in plugins.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from mmcore.registry import KINDS, Entry, Registry
from mmcore.schema.types import label, option_type

BEGIN = "<!-- BEGIN GENERATED OPTIONS (python -m mmcore.describe docs/plugins.md) -->"
END = "<!-- END GENERATED OPTIONS -->"


def show_default(default: Any) -> str:
    """A default as a recipe would write it (YAML-like: ``null``, ``true``, ``'text'``)."""
    if default is None:
        return "null"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, str):
        return repr(default)
    return str(list(default) if isinstance(default, tuple) else default)


def option_rows(entry: Entry) -> list[tuple[str, str, str]]:
    """(name, type, default) of every option of ``entry``, in declaration order."""
    return [(name, label(option_type(entry.defaults, entry.types, name)), show_default(value))
            for name, value in entry.defaults.items()]


def options_cell(entry: Entry) -> str:
    """One line per option: ``name: type = default``."""
    return "\n".join(f"{n}: {t} = {d}" for n, t, d in option_rows(entry)) or "(none)"


def docstring(entry: Entry) -> str:
    """The full docstring of the entry's class or factory."""
    return inspect.getdoc(entry.factory) or entry.description or ""


def fields(entry: Entry) -> str:
    """What a task or head requires, or what each view of a dataset provides."""
    if entry.kind in ("task", "head"):
        return ", ".join(sorted(entry.requires))
    if entry.kind == "dataset":
        return "; ".join(f"{view}: {', '.join(sorted(provided))}" for view, provided in entry.provides.items())
    return ""


def entries_table(kind: str, entries: list[Entry]) -> Table:
    """The ``mmcore list-<kind>s`` table: name, plugin, options with types and defaults, description."""
    table = Table(title=f"{kind}s")
    for column in ("name", "plugin", "options (name: type = default)", "description"):
        table.add_column(column)
    if kind in ("task", "head", "dataset"):
        table.add_column("requires" if kind != "dataset" else "views")
    for entry in entries:
        row = [entry.name, entry.origin, escape(options_cell(entry)), escape(entry.description)]
        if kind in ("task", "head", "dataset"):
            row.append(", ".join(entry.provides) if kind == "dataset" else ", ".join(sorted(entry.requires)))
        table.add_row(*row)
    return table


def long_form(entry: Entry, label: str) -> Panel:
    """``mmcore describe`` / ``--verbose``: the docstring, the options table and the fields, in a panel."""
    options = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("option", "type", "default"):
        options.add_column(column)
    for row in option_rows(entry):
        options.add_row(*(escape(cell) for cell in row))
    parts: list[Any] = [escape(docstring(entry)), "", options if entry.defaults else "[dim]no options[/dim]"]
    if fields(entry):
        parts += ["", f"[bold]{'views' if entry.kind == 'dataset' else 'requires'}:[/bold] {escape(fields(entry))}"]
    return Panel(Group(*parts), title=f"{entry.kind} [cyan]{entry.name}[/cyan] — {escape(label)}", title_align="left")


def find(registry: Registry, name: str, kind: str | None = None) -> list[Entry]:
    """Every entry called ``name`` (of ``kind``, when given)."""
    return [e for e in registry.entries(kind) if e.name == name]


def markdown(registry: Registry, origins: set[str]) -> str:
    """The generated section: per kind, a table of each entry from ``origins`` with its options."""
    out = [BEGIN, ""]
    for kind in KINDS:
        entries = [e for e in registry.entries(kind) if e.origin in origins]
        if not entries:
            continue
        out += [f"### Built-in {kind}s", "", "| name | option | type | default |", "|---|---|---|---|"]
        for entry in entries:
            rows = option_rows(entry) or [("(none)", "", "")]
            for index, (option, kind_name, default) in enumerate(rows):
                first = f"`{entry.name}`" if index == 0 else ""
                kind_name = kind_name.replace("|", "\\|")  # a union's bar would end the table cell
                out.append(f"| {first} | `{option}` | {kind_name} | `{default}` |".replace("`(none)`", "(none)"))
        out.append("")
    return "\n".join([*out, END])


def update(page: Path, generated: str) -> str:
    """The text of ``page`` with its generated section replaced by ``generated``."""
    text = page.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{page}: no generated section ({BEGIN} ... {END})")
    return text[:start] + generated + text[end + len(END):]


def built_in_markdown() -> str:
    """The generated section for the built-in plugins: those of the distribution that installs ``mmcore``."""
    from importlib.metadata import packages_distributions

    from mmcore.plugins import load_plugins

    own = set(packages_distributions().get("mmcore", []))
    plugins = load_plugins()
    origins = {name for name, info in plugins.infos.items() if info.distribution in own}
    return markdown(plugins.registry, origins)


def main(argv: list[str]) -> None:
    """``python -m mmcore.describe PAGE``: rewrite PAGE's generated section in place (atomically)."""
    from mmcore.rundir import atomic_write_text

    page = Path(argv[0])
    atomic_write_text(page, update(page, built_in_markdown()))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
