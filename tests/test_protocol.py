"""The paper's protocol: all four downstream tasks in the paper-scale recipes, attribute/category masking in the
phrase stage, selection never on the reported split, no zero-shot score from a head of an earlier stage, and
the token stage on COCO caption images."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcore.plugins import load_plugins
from mmcore.recipe import load_recipe
from mmcore.validate import resolve
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "recipes" / "paper").glob("*.yaml"))


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


# ---- the paper-scale recipes fine-tune VQA, GQA, NLVR2 and retrieval ------------------------------------------

@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: p.stem)
def test_paper_recipes_fine_tune_all_four_downstream_tasks(recipe: Path, registry, tmp_path: Path) -> None:
    overrides = [f"datasets.lxmert.data_root={tmp_path}"] if "lxmert" in recipe.stem else []
    resolved = resolve(load_recipe(recipe, overrides), registry)
    tuned = {item["head"]: item for item in resolved["finetune"]}
    assert sorted(tuned) == ["gqa", "nlvr2", "retrieval", "vqa"]
    assert {h: tuned[h]["epochs"] for h in tuned} == {"vqa": 6, "gqa": 5, "nlvr2": 8, "retrieval": 8}
    assert all(item["optim"]["lr"] == 5.0e-5 and item["batch_size"] == 32 for item in tuned.values())


def test_validate_and_show_list_the_gqa_and_nlvr2_fine_tunings() -> None:
    out = invoke(["validate", *map(str, PAPER)])  # `mmcore validate recipes/paper/*.yaml`
    assert out.count("4 fine-tuning") == len(PAPER)
    shown = invoke(["show", str(ROOT / "recipes/paper/msp_tps_lxmert_data.yaml")])
    for name in ("gqa", "nlvr2"):
        assert f"- name: {name}\n  head: {name}\n" in shown
