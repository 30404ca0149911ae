"""The default VQA fine-tuning learns from the image on the drawn shapes (1,000 images; slow: ~10 min a seed on
one core). docs/your-data.md gives the figures and the command."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from helpers import invoke
from shapes import write_source

pytest.importorskip("PIL")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def vqa_recipe(ready: Path, seed: int) -> str:
    """LXMERT-S at CPU width, no pre-training, the default VQA fine-tuning of recipes/base/downstream.yaml."""
    downstream = yaml.safe_load((RECIPES / "base/downstream.yaml").read_text())
    vqa = next(entry for entry in downstream["finetune"] if entry["name"] == "vqa")
    return textwrap.dedent(f"""\
        name: drawn_vqa
        seed: {seed}
        include: [base/lxmert_s_cpu.yaml]
        datasets:
          pairs: {{root: {ready}}}
        """) + yaml.safe_dump({"finetune": [vqa]}, sort_keys=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_vqa_beats_the_question_only_baseline(tmp_path: Path, seed: int) -> None:
    source = write_source(tmp_path / "source", {"train": 700, "val": 150, "test": 150}, seed=0)
    invoke(["data", "prepare", str(source), str(tmp_path / "ready"), "--extractor", "grid", "--quiet"])
    recipe = tmp_path / "drawn_vqa.yaml"
    recipe.write_text(vqa_recipe(tmp_path / "ready", seed))
    invoke(["run", str(recipe), "--output-dir", str(tmp_path), "--run-name", "a", "--cache-dir",
            str(tmp_path / "cache"), "--quiet"])
    metrics = json.loads((tmp_path / "drawn_vqa/a/results.json").read_text())["vqa"]["metrics"]
    assert metrics["accuracy"] >= metrics["question_only"] + 0.20
    assert metrics["accuracy_colour"] > 1 / 8 + 0.1 and metrics["accuracy_shape"] > 1 / 3 + 0.1
