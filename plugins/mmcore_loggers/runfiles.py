"""What the experiment-tracker loggers send besides metrics: the resolved recipe as flat parameters, and the run's
``summary.md`` and loss-curve plots as files."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from mmcore.runplots import run_plots

RESOLVED = "recipe.resolved.yaml"
# A record's coordinates and labels, not metrics: ``step`` is the x-axis, ``scope`` names the stage or evaluation.
COORDINATES = frozenset({"step", "epoch", "scope"})


def read_recipe(run_dir: Path) -> dict[str, Any]:
    """The run's resolved recipe (written before any logger starts)."""
    path = Path(run_dir) / RESOLVED
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def flat_params(recipe: Any, prefix: str = "") -> dict[str, str]:
    """``stages.token.epochs``-style keys with string values; list items are keyed by their ``name`` when they have
    one (as ``--set`` addresses them), else by index."""
    if isinstance(recipe, dict):
        items = [(str(k), v) for k, v in recipe.items()]
    elif isinstance(recipe, list) and recipe:
        items = [(str(v["name"]) if isinstance(v, dict) and "name" in v else str(i), v) for i, v in enumerate(recipe)]
    else:
        return {prefix: "" if recipe is None else str(recipe)} if prefix else {}
    out: dict[str, str] = {}
    for key, value in items:
        out.update(flat_params(value, f"{prefix}.{key}" if prefix else key))
    return out


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's numbers as ``<scope>/<metric>`` (booleans and text left out)."""
    scope = str(record.get("scope", "run"))
    return {f"{scope}/{key}": float(value) for key, value in record.items()
            if key not in COORDINATES and not isinstance(value, bool) and isinstance(value, (int, float))}


@contextmanager
def run_files(run_dir: Path) -> Iterator[list[Path]]:
    """The run's ``summary.md`` and its loss-curve and downstream plots (drawn now into a temporary folder when
    matplotlib is installed), for the block's duration."""
    run_dir = Path(run_dir)
    files = [p for p in (run_dir / "summary.md",) if p.is_file()]
    with tempfile.TemporaryDirectory(prefix="mmcore-plots-") as tmp:
        files += run_plots(run_dir, Path(tmp))
        yield files
