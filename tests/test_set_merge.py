"""``--set`` with a mapping value merges key by key into the recipe's mapping; ``key:=value`` replaces it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcore.recipe import load_recipe

RECIPE = """\
backbone: {name: lxmert_s, hidden_size: 128, x_layers: 2}
datasets:
  synthworld: {train_images: 300, seed: 3}
stages:
  - name: sentence
    data: {view: sentence}
    tasks: {mlm: {mask_prob: 0.2}, itm_hs: {}}
"""


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path


def test_mapping_value_adds_a_task_and_keeps_the_others(recipe_file):
    recipe = load_recipe(recipe_file, ("stages.sentence.tasks={itc: {temperature: 0.1}}",))
    assert recipe.data["stages"][0]["tasks"] == {"mlm": {"mask_prob": 0.2}, "itm_hs": {}, "itc": {"temperature": 0.1}}
    assert recipe.where(("stages", "0", "tasks", "itc", "temperature"))[0].startswith("--set")
    assert recipe.where(("stages", "0", "tasks", "mlm"))[0] == str(recipe_file.resolve())


def test_nested_task_options_merge(recipe_file):
    recipe = load_recipe(recipe_file, ("stages.sentence={tasks: {mlm: {weight: 2.0}}}",))
    assert recipe.data["stages"][0]["tasks"]["mlm"] == {"mask_prob": 0.2, "weight": 2.0}
    assert recipe.data["stages"][0]["name"] == "sentence" and "itm_hs" in recipe.data["stages"][0]["tasks"]


def test_backbone_mapping_keeps_its_name(recipe_file):
    recipe = load_recipe(recipe_file, ("backbone={hidden_size: 64}",))
    assert recipe.data["backbone"] == {"name": "lxmert_s", "hidden_size": 64, "x_layers": 2}
    assert recipe.where(("backbone", "hidden_size"))[0] == "--set backbone={hidden_size: 64}"
    assert recipe.where(("backbone", "name"))[0] == str(recipe_file.resolve())


def test_dataset_options_merge(recipe_file):
    recipe = load_recipe(recipe_file, ("datasets={synthworld: {train_images: 50}}",))
    assert recipe.data["datasets"] == {"synthworld": {"train_images": 50, "seed": 3}}


def test_colon_equals_replaces_the_mapping(recipe_file):
    recipe = load_recipe(recipe_file, ("stages.sentence.tasks:={itc: {}}",))
    assert recipe.data["stages"][0]["tasks"] == {"itc": {}}
    assert recipe.where(("stages", "0", "tasks", "mlm"))[0] == "--set stages.sentence.tasks:={itc: {}}"
    recipe = load_recipe(recipe_file, ("backbone:={name: other}",))
    assert recipe.data["backbone"] == {"name": "other"}


def test_scalar_and_list_values_still_replace(recipe_file):
    recipe = load_recipe(recipe_file, ("stages.sentence.tasks.mlm.mask_prob=0.5", "stages=[]"))
    assert recipe.data["stages"] == []
    recipe = load_recipe(recipe_file, ("stages.sentence.tasks.mlm=0",))
    assert recipe.data["stages"][0]["tasks"]["mlm"] == 0


def test_show_merges_a_backbone_mapping_into_a_shipped_recipe():
    from tests.helpers import invoke

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "msp_tps.yaml"
    out = invoke(["show", str(recipe), "--set", "backbone={hidden_size: 64}"])
    assert "name: lxmert_s" in out and "hidden_size: 64" in out
