"""Run directories of a recipe on disk: which exist, which are complete, which hold the same recipe.

A run directory is *complete* when its ``results.json`` records every stage (``_stages``) and every zero-shot and
fine-tuning entry its ``recipe.resolved.yaml`` names: exactly what the engine itself skips on ``--resume``.
Two resolved recipes are the same run when they agree on everything but the keys that cannot change a result
(loggers, data-loader workers, checkpoint frequency, threads), so adding a logger or workers to a batch, or a mmcore that
writes a new such key, still finds the earlier runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmcore.errors import MMCoreError
from mmcore.recipe import parse_yaml

RESOLVED = "recipe.resolved.yaml"
# Keys (at the top, in stages and in fine-tunings) that change how a run goes, not what it computes.
OPERATIONAL_KEYS = frozenset({"loggers", "num_workers", "checkpoint_every", "threads"})


def missing_parts(recipe: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """The stages and evaluations of ``recipe`` that ``results`` does not record yet (empty: the run is complete)."""
    done_stages = results.get("_stages", {})
    missing = [f"stage {s['name']}" for s in recipe.get("stages") or [] if s["name"] not in done_stages]
    for section in ("zero_shot", "finetune"):
        missing += [f"{section} {item['name']}" for item in recipe.get(section) or [] if item["name"] not in results]
    return missing


def read_run(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resolved recipe, results) of a run directory; results are empty when nothing finished yet."""
    try:
        recipe = parse_yaml((path / RESOLVED).read_text(encoding="utf-8"))
        results_path = path / "results.json"
        results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
    except (OSError, ValueError) as exc:
        raise MMCoreError(f"{path}: cannot read the run directory: {exc}") from None
    if not isinstance(recipe, dict) or not isinstance(results, dict):
        raise MMCoreError(f"{path}: {RESOLVED} or results.json is not a mapping")
    return recipe, results


def is_complete(path: Path) -> bool:
    """Whether the run directory at ``path`` has finished every stage and evaluation of its recipe."""
    recipe, results = read_run(path)
    return (path / "results.json").exists() and not missing_parts(recipe, results)


def run_dirs_in(path: Path) -> list[Path]:
    """The run directories directly under ``path``, oldest first (by last write of their results)."""
    if not path.is_dir():
        return []
    found = [child for child in path.iterdir() if (child / RESOLVED).is_file()]
    return sorted(found, key=_last_write)


def _last_write(path: Path) -> float:
    results = path / "results.json"
    return (results if results.exists() else path / RESOLVED).stat().st_mtime


def find_previous(recipe_dir: Path, resolved_text: str, run_name: str | None) -> tuple[Path | None, bool]:
    """An earlier run of exactly this resolved recipe under ``recipe_dir``: (path or None, complete?).

    With ``run_name`` only that directory counts, and it must hold the same recipe. Without, the newest
    complete run wins, else the newest partial one; runs of an edited recipe are left alone.
    """
    if run_name is not None:
        path = recipe_dir / run_name
        if not (path / RESOLVED).is_file():
            return None, False
        if not same_recipe((path / RESOLVED).read_text(encoding="utf-8"), resolved_text):
            raise MMCoreError(f"run directory {path} holds a different version of this recipe; use --overwrite to "
                              f"start it again or another --run-name")
        return path, is_complete(path)
    same = [p for p in run_dirs_in(recipe_dir) if same_recipe((p / RESOLVED).read_text(encoding="utf-8"), resolved_text)]
    complete = [p for p in same if is_complete(p)]
    if complete:
        return complete[-1], True
    return (same[-1], False) if same else (None, False)


def same_recipe(text_a: str, text_b: str) -> bool:
    """Whether two resolved recipes describe the same run, ignoring :data:`OPERATIONAL_KEYS`."""
    if text_a == text_b:
        return True
    return _results_part(parse_yaml(text_a)) == _results_part(parse_yaml(text_b))


def _results_part(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _results_part(v) for k, v in node.items() if k not in OPERATIONAL_KEYS}
    if isinstance(node, list):
        return [_results_part(v) for v in node]
    return node
