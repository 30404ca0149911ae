"""Helpers several test modules share: the CLI in-process, a tiny recipe run, run outputs without timings."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch
from click.testing import CliRunner

from mmcore.cli import main


def invoke(args: list[str], code: int = 0, width: int = 250) -> str:
    """``mmcore ARGS`` in-process; asserts the exit code and returns the output."""
    result = CliRunner().invoke(main, args, terminal_width=width)
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def run_recipe(base: Path, recipe_text: str, cache_dir: Path) -> Path:
    """Write ``recipe_text`` (dedented) to ``base/tiny.yaml``, run it as run ``a``; return the run directory."""
    recipe = base / "tiny.yaml"
    recipe.write_text(textwrap.dedent(recipe_text))
    invoke(["run", str(recipe), "--output-dir", str(base), "--run-name", "a", "--cache-dir", str(cache_dir), "--quiet"])
    return base / "tiny" / "a"


def comparable(run: Path) -> tuple[dict, list]:
    """results.json and metrics.jsonl without wall-clock figures (seconds, samples/s)."""
    results = json.loads((run / "results.json").read_text())
    results.pop("_run")
    for entry in [*results["_stages"].values(), *(v for k, v in results.items() if not k.startswith("_"))]:
        entry.pop("seconds", None)  # zero-shot entries have no training time
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("samples_per_s", None)  # validation records (after a fine-tuning's epoch) have none
    return results, records


class Rows(list):
    """A view for Trainer tests: its examples are tensors (``MixedExamples([Rows(t.unbind(0))], [None])``)."""


class Stack:
    """A collate function for Trainer tests: examples -> {"x": [B, ...]}."""

    def set_epoch(self, epoch: int) -> None:
        pass

    def __call__(self, items):
        return {"x": torch.stack([example for example, _ in items])}
