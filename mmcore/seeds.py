"""Repeated seeds: a recipe with ``seeds: [0, 1, 2]`` runs its whole curriculum once per training seed.

A *seed group* is a directory ``<output dir>/<name>/<run name or timestamp>/`` holding ``recipe.seeds.yaml`` (the
resolved recipe with its ``seeds``), one ordinary run directory per seed (``seed_0/``, ``seed_1/``, ... each with
the recipe's ``seed`` set to that seed and nothing else changed, so the datasets' own seeds stay fixed), and the
aggregate ``results.json`` and ``summary.md``. Running a group again finishes it: complete seeds are skipped, a
partial one is resumed, a missing one is started.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore.aggregate import aggregate_results, write_group_summary
from mmcore.errors import MMCoreError
from mmcore.layout import Layout
from mmcore.plugins import Plugins
from mmcore.progress import Reporter
from mmcore.recipe import dump_recipe, parse_yaml
from mmcore.runfinder import RESOLVED, is_complete, same_recipe
from mmcore.rundir import RunDir, atomic_write_text
from mmcore.validate import strip_private

GROUP_RECIPE = "recipe.seeds.yaml"


@dataclass(frozen=True)
class SeedOutcome:
    """What happened to one seed of a group: ``status`` is new, resumed or skipped."""

    seed: int
    status: str
    path: Path


def is_group(path: Path) -> bool:
    """Whether ``path`` is a seed group directory."""
    return (path / GROUP_RECIPE).is_file()


def seed_dir(group: Path, seed: int) -> Path:
    """The run directory of ``seed`` in ``group``."""
    return group / f"seed_{seed}"


def for_seed(resolved: dict[str, Any], seed: int) -> dict[str, Any]:
    """The resolved recipe of one seed's run: ``seed`` set, ``seeds`` gone (an ordinary one-run recipe)."""
    out = {k: copy.deepcopy(v) for k, v in resolved.items() if k != "seeds"}
    out["seed"] = seed
    return out


def group_seeds(group: Path) -> list[int]:
    """The seeds ``group``'s recipe names."""
    recipe = group_recipe(group)
    return [int(s) for s in recipe.get("seeds") or []]


def group_recipe(group: Path) -> dict[str, Any]:
    """The resolved recipe of ``group`` (with its ``seeds``)."""
    try:
        recipe = parse_yaml((group / GROUP_RECIPE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MMCoreError(f"{group}: cannot read {GROUP_RECIPE}: {exc}") from None
    if not isinstance(recipe, dict):
        raise MMCoreError(f"{group}: {GROUP_RECIPE} is not a mapping")
    return recipe


def group_runs(group: Path) -> dict[int, Path]:
    """The seed run directories present in ``group`` (those of its recipe's seeds that hold a recipe), by seed."""
    return {seed: seed_dir(group, seed) for seed in group_seeds(group) if (seed_dir(group, seed) / RESOLVED).is_file()}


def group_complete(group: Path) -> bool:
    """Whether every seed of ``group`` has a complete run."""
    runs = group_runs(group)
    return len(runs) == len(group_seeds(group)) and all(is_complete(p) for p in runs.values())


def same_group(text_a: str, text_b: str) -> bool:
    """Whether two group recipes describe the same runs, whatever their ``seeds`` (a group can gain seeds)."""
    a, b = ({k: v for k, v in parse_yaml(text).items() if k != "seeds"} for text in (text_a, text_b))
    return same_recipe(dump_recipe(a), dump_recipe(b))


def find_previous_group(recipe_dir: Path, text: str, run_name: str | None) -> Path | None:
    """An earlier group of this recipe under ``recipe_dir`` (with ``run_name``, only that one): the newest complete
    one, else the newest; a group of an edited recipe is left alone (with ``run_name``, refused)."""
    if run_name is not None:
        path = recipe_dir / run_name
        if not is_group(path):
            return None
        if not same_group((path / GROUP_RECIPE).read_text(encoding="utf-8"), text):
            raise MMCoreError(f"seed group {path} holds a different version of this recipe; use --overwrite to start "
                              f"it again or another --run-name")
        return path
    groups = sorted((p for p in recipe_dir.iterdir() if is_group(p)), key=lambda p: (p / GROUP_RECIPE).stat().st_mtime) \
        if recipe_dir.is_dir() else []
    same = [p for p in groups if same_group((p / GROUP_RECIPE).read_text(encoding="utf-8"), text)]
    complete = [p for p in same if group_complete(p)]
    return (complete or same or [None])[-1]


def run_group(plugins: Plugins, resolved: dict[str, Any], group: RunDir, *, overwrite: bool, cache_dir: Path | None,
              reporter: Reporter, threads: int | None = None) -> tuple[list[SeedOutcome], dict[str, Any]]:
    """Run every seed of ``resolved["seeds"]`` into ``group``: skip complete seeds, resume partial ones; keep the
    aggregate ``results.json`` and ``summary.md`` current after each seed. Returns the outcomes and the aggregate."""
    from mmcore.engine import run_recipe

    seeds = [int(s) for s in resolved["seeds"]]
    if group.main:
        atomic_write_text(group.path / GROUP_RECIPE, dump_recipe(strip_private(resolved)))
    outcomes = []
    for index, seed in enumerate(seeds, 1):
        recipe = for_seed(resolved, seed)
        text = dump_recipe(strip_private(recipe))
        path = seed_dir(group.path, seed)
        head = f"[bold]seed {seed}[/bold] ({index}/{len(seeds)})"
        # The group was chosen as this recipe's (--resume, or a batch matching its recipe.seeds.yaml), so its seed
        # directories are this recipe's runs, as --resume RUN_DIR takes a run directory's.
        existing = (path / RESOLVED).is_file() and not overwrite
        if existing and is_complete(path):
            reporter.message(f"{head}: complete in {path}, skipped")
            outcomes.append(SeedOutcome(seed, "skipped", path))
            continue
        if existing:
            run_dir, status = RunDir.open(path), "resumed"
        else:
            run_dir, status = RunDir.start(group.path.parent, group.path.name, path.name, overwrite, text), "new"
        reporter.message(f"{head} → {run_dir.path}" + (" (resuming)" if status == "resumed" else ""))
        run_recipe(recipe, plugins, run_dir, reporter, cache_dir, threads)
        outcomes.append(SeedOutcome(seed, status, run_dir.path))
        write_aggregate(group, resolved, Layout.of(plugins.registry))
    return outcomes, write_aggregate(group, resolved, Layout.of(plugins.registry))


def run_group_in_batch(plugins: Plugins, resolved: dict[str, Any], parent: Path, *, run_name: str | None,
                       overwrite: bool, cache_dir: Path | None, reporter: Reporter, head: str,
                       threads: int | None = None) -> tuple[str, Path]:
    """One seeded recipe of ``mmcore run A.yaml B.yaml``: its earlier group under ``parent/<name>`` is finished
    (complete seeds skipped, a partial one resumed), else a new group is made. Returns (status, group path)."""
    name = resolved["name"]
    text = dump_recipe(strip_private(resolved))
    previous = None if overwrite else find_previous_group(parent / name, text, run_name)
    group = RunDir(previous) if previous is not None else RunDir.create(parent, name, run_name, overwrite)
    reporter.message(f"{head} → {group.path} (seeds {', '.join(map(str, resolved['seeds']))})")
    outcomes, _ = run_group(plugins, resolved, group, overwrite=overwrite, cache_dir=cache_dir, reporter=reporter,
                            threads=threads)
    return group_status(outcomes), group.path


def group_status(outcomes: list[SeedOutcome]) -> str:
    """``skipped`` when every seed was, ``new`` when every seed was, else ``resumed``; each seed's status after."""
    statuses = {o.status for o in outcomes}
    overall = statuses.pop() if len(statuses) == 1 and statuses <= {"skipped", "new"} else "resumed"
    return f"{overall} ({', '.join(f'seed {o.seed} {o.status}' for o in outcomes)})"


def write_aggregate(group: RunDir, resolved: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """Write the group's aggregate ``results.json`` and ``summary.md`` from its seeds' results; return the aggregate."""
    runs = {seed: p for seed, p in group_runs(group.path).items() if seed in resolved["seeds"]}
    results = {seed: _results(path) for seed, path in runs.items()}
    aggregate = aggregate_results({seed: r for seed, r in results.items() if r}, layout)
    aggregate["_seeds"] = [int(s) for s in resolved["seeds"]]
    aggregate["_runs"] = {str(seed): {"path": path.name, "complete": is_complete(path)} for seed, path in runs.items()}
    if group.main:
        group.write_results(aggregate)
        write_group_summary(group.path, resolved, aggregate,
                            {seed: (path, is_complete(path)) for seed, path in runs.items()}, layout)
    return aggregate


def refresh_group(path: Path, layout: Layout) -> None:
    """Rewrite the aggregate of the seed group at ``path`` from its seeds' results (after one seed was resumed alone)."""
    write_aggregate(RunDir(path), group_recipe(path), layout)


def _results(path: Path) -> dict[str, Any]:
    file = path / "results.json"
    try:
        return json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}
    except (OSError, ValueError) as exc:
        raise MMCoreError(f"{file}: cannot read: {exc}") from None
