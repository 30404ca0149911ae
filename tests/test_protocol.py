"""The paper's protocol: all four downstream tasks in the paper-scale recipes, attribute/category masking in the
phrase stage, selection never on the reported split, no zero-shot score from a head of an earlier stage, and
the token stage on COCO caption images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcore.plugins import load_plugins
from mmcore.recipe import load_recipe
from mmcore.validate import resolve
from tests.helpers import invoke, run_recipe

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


# ---- zero-shot only from a head the start stage itself trained -----------------------------------------------

TINY_SPT = """\
name: tiny
seed: 3
eval_batch_size: 64
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: sentence, data: {view: sentence}, tasks: {mlm: {}, itm_hs: {}}, max_steps: 1, batch_size: 8}
  - {name: token, data: {view: token}, tasks: {mlm: {}, mrfr: {}}, max_steps: 1, batch_size: 8}
zero_shot:
  - {name: zs_final, head: retrieval, data: {view: retrieval, split: test}}
  - {name: zs_sentence, head: retrieval, init: sentence, data: {view: retrieval, split: test}}
"""


def test_zero_shot_after_a_last_stage_without_itm_reports_no_zero_shot_head(tmp_path: Path) -> None:
    run = run_recipe(tmp_path, TINY_SPT, tmp_path / "cache")
    results = json.loads((run / "results.json").read_text())
    final = results["zs_final"]
    assert "metrics" not in final  # the ITM head of the sentence stage is not scored on the token stage's weights
    assert final["skipped"].startswith("no zero-shot head: stage 'token'")
    assert "(it trained mlm, mrfr)" in final["skipped"]
    # From the stage that trained it, the same head is scored.
    assert set(results["zs_sentence"]["metrics"]) >= {"ir_r1", "tr_r1"}
    assert "skipped" not in results["zs_sentence"]
