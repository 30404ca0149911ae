"""Run several recipes one after another under one parent directory; complete runs are skipped, partial ones resumed
(which are: :mod:`mmcore.runfinder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore.errors import MMCoreError
from mmcore.plugins import Plugins
from mmcore.progress import Reporter
from mmcore.recipe import dump_recipe
from mmcore.runfinder import find_previous
from mmcore.seeds import run_group_in_batch
from mmcore.validate import strip_private


@dataclass(frozen=True)
class Outcome:
    """What happened to one recipe of a multi-recipe run: ``status`` is new, resumed or skipped."""

    name: str
    status: str
    path: Path


def run_many(prepared: Sequence[tuple[Plugins, dict[str, Any]]], *, output_dir: Path | None, run_name: str | None,
             overwrite: bool, cache_dir: Path | None, reporter: Reporter, threads: int | None = None) -> list[Outcome]:
    """Run each (plugins, resolved recipe) into ``<output dir>/<name>/...`` in turn; skip complete, resume partial."""
    from mmcore.engine import run_recipe
    from mmcore.rundir import RunDir

    names = [resolved["name"] for _, resolved in prepared]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MMCoreError(f"several recipes are named {', '.join(map(repr, twice))}; each needs its own 'name' "
                          f"because each runs into <output dir>/<name>/")
    outcomes = []
    for index, (plugins, resolved) in enumerate(prepared, 1):
        name = resolved["name"]
        parent = output_dir or Path(resolved["output_dir"])
        head = f"[bold]recipe {index}/{len(prepared)}[/bold]: [cyan]{name}[/cyan]"
        if resolved.get("seeds"):  # a seed group: finished seed by seed
            status, path = run_group_in_batch(plugins, resolved, parent, run_name=run_name, overwrite=overwrite,
                                              cache_dir=cache_dir, reporter=reporter, head=head, threads=threads)
            outcomes.append(Outcome(name, status, path))
            continue
        text = dump_recipe(strip_private(resolved))
        previous, complete = (None, False) if overwrite else find_previous(parent / name, text, run_name)
        if previous is not None and complete:
            reporter.message(f"{head} complete in {previous}, skipped")
            outcomes.append(Outcome(name, "skipped", previous))
            continue
        if previous is not None:
            run_dir, status = RunDir.open(previous), "resumed"
        else:
            run_dir, status = RunDir.start(parent, name, run_name, overwrite, text), "new"
        reporter.message(f"{head} → {run_dir.path}" + (" (resuming)" if status == "resumed" else ""))
        run_recipe(resolved, plugins, run_dir, reporter, cache_dir, threads)
        outcomes.append(Outcome(name, status, run_dir.path))
    return outcomes
