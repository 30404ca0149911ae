"""One recipe schema: ``mmcore schema`` describes every shipped recipe (as written and as ``mmcore show`` resolves
it), validation fills the declared defaults, plugin option types come from their declarations, and the docs table
is generated from the same declarations."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mmcore.errors import PluginError
from mmcore.plugins import load_plugins
from mmcore.recipe import Recipe, dump_recipe, load_recipe, parse_yaml
from mmcore.registry import Registry
from mmcore.schema import docs
from mmcore.schema.keys import DATA, FINETUNE_OPTIM, OPTIM, SELECT, STAGE, TASK, TOP, ZERO_SHOT
from mmcore.shipped import shipped_recipes
from mmcore.validate import RecipeInvalid, resolve, strip_private
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """\
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64}
datasets:
  synthworld: {train_images: 40}
stages:
  - data: {view: token}
    tasks: {mlm: {}}
zero_shot:
  - {head: retrieval, data: {view: retrieval}}
finetune:
  - {head: vqa, data: {view: vqa}}
"""


@pytest.fixture(scope="module")
def schemas() -> dict[str, jsonschema.Draft202012Validator]:
    """``mmcore schema`` and ``mmcore schema --core``, each checked as a draft 2020-12 schema."""
    out = {}
    for name, args in (("plugins", ["schema"]), ("core", ["schema", "--core"])):
        schema = json.loads(invoke(args))
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
        out[name] = jsonschema.Draft202012Validator(schema)
    return out


def _problems(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)]


@pytest.mark.parametrize("kind", ["plugins", "core"])
def test_every_shipped_recipe_file_and_its_resolved_form_match_the_schema(schemas, kind):
    registry = load_plugins().registry
    resolved_count = 0
    for shipped in shipped_recipes():
        raw = parse_yaml(shipped.path.read_text(encoding="utf-8"))
        assert _problems(schemas[kind], raw) == [], shipped.name
        if shipped.name.startswith("base/"):
            continue  # bases are parts that others include, not whole recipes
        resolved = parse_yaml(dump_recipe(strip_private(resolve(load_recipe(shipped.name), registry))))  # = show
        assert _problems(schemas[kind], resolved) == [], shipped.name
        resolved_count += 1
    assert resolved_count >= 15


@pytest.mark.parametrize(("edit", "path"), [
    (("tasks: {mlm: {}}", "tasks: {mlm: {max_predictions: twelve}}"), "$.stages[0].tasks.mlm.max_predictions"),
    (("tasks: {mlm: {}}", "tasks: {mlm: {mask_prb: 0.2}}"), "$.stages[0].tasks.mlm"),
    (("data: {view: token}", "data: {view: token}\n    epoch: 2"), "$.stages[0]"),
    (("synthworld: {train_images: 40}", "synthworld: {train_images: many}"), "$.datasets.synthworld.train_images"),
    (("hidden_size: 32", "hidden_size: wide"), "$.backbone"),
    (("backbone:", "precision: fp16\nbackbone:"), "$.precision"),
    (("{head: vqa, data: {view: vqa}}", "{head: vqa, data: {view: vqa}, optim: {lr: 0}}"), "$.finetune[0].optim.lr"),
    (("{head: retrieval, data: {view: retrieval}}", "{head: retrieval, data: {view: retrieval}, options: {ks: [one]}}"),
     "$.zero_shot[0]"),
])
def test_the_schema_rejects_what_validation_rejects(schemas, tmp_path, edit, path):
    assert _problems(schemas["plugins"], parse_yaml(RECIPE)) == []
    assert edit[0] in RECIPE
    bad = parse_yaml(RECIPE.replace(*edit))
    assert any(p.startswith(path) for p in _problems(schemas["plugins"], bad)), _problems(schemas["plugins"], bad)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace(*edit))
    assert "error:" in invoke(["validate", str(recipe)], code=2)


def test_plugin_names_the_schema_does_not_know_stay_open(schemas):
    """A recipe may load its own plugins (plugins:), so an unknown task or backbone is left to validation."""
    data = parse_yaml(RECIPE.replace("tasks: {mlm: {}}", "tasks: {my_task: {depth: 3}}")
                      .replace("name: lxmert_s", "name: my_backbone"))
    assert _problems(schemas["plugins"], data) == []


@pytest.mark.parametrize(("edit", "expected"), [
    (("tasks: {mlm: {}}", "tasks: {mlm: {max_predictions: twelve}}"),
     "recipe.yaml:6: stages[0].tasks.mlm.max_predictions: must be an integer or null (default None), got 'twelve'"),
    (("{head: retrieval, data: {view: retrieval}}", "{head: retrieval, data: {view: retrieval}, options: {ks: [one]}}"),
     "recipe.yaml:8: zero_shot[0].options.ks: must be a list of integers or an integer (default [1, 5, 10]), "
     "got ['one']"),
    (("backbone:", "loggers: {wandb: {entity: 7}}\nbackbone:"),
     "recipe.yaml:1: loggers.wandb.entity: must be a string or null (default None), got 7"),
])
def test_validate_checks_none_default_and_list_options_by_their_declared_type(tmp_path, edit, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace(*edit))
    assert expected in " ".join(invoke(["validate", str(recipe)], code=2, width=1000).split())


def test_declared_option_types_still_accept_what_the_plugin_accepts(tmp_path):
    registry = load_plugins().registry
    text = RECIPE.replace("tasks: {mlm: {}}", "tasks: {mlm: {max_predictions: 12}}").replace(
        "{head: retrieval, data: {view: retrieval}}", "{head: retrieval, data: {view: retrieval}, options: {ks: 5}}")
    resolved = resolve(Recipe(tmp_path / "r.yaml", parse_yaml(text)), registry)
    assert resolved["stages"][0]["tasks"]["mlm"]["max_predictions"] == 12
    assert resolved["zero_shot"][0]["options"]["ks"] == 5


def test_validation_fills_exactly_the_declared_defaults(tmp_path):
    resolved = resolve(Recipe(tmp_path / "r.yaml", parse_yaml(RECIPE)), load_plugins().registry)
    stage, zero_shot, finetune = resolved["stages"][0], resolved["zero_shot"][0], resolved["finetune"][0]
    scalars = {k: v for k, v in TOP.defaults().items() if TOP[k].section is None}
    assert {k: resolved[k] for k in scalars} == scalars
    assert {k: stage[k] for k in STAGE.defaults()} == STAGE.defaults()
    assert stage["optim"] == OPTIM.defaults() and finetune["optim"] == FINETUNE_OPTIM.defaults()
    assert finetune["select"] == SELECT.defaults()
    assert stage["tasks"]["mlm"]["weight"] == TASK["weight"].default
    assert stage["data"][0]["weight"] == DATA["weight"].default and stage["data"][0]["limit"] == DATA["limit"].default
    assert zero_shot["max_text_len"] == ZERO_SHOT["max_text_len"].default == stage["max_text_len"]
    assert finetune["epochs"] == load_plugins().registry.get("head", "vqa").factory.epochs  # the head's, not 1


def test_an_option_type_that_does_not_fit_its_default_is_a_plugin_error():
    class Bad:
        name = "bad"
        requires: frozenset[str] = frozenset()
        defaults = {"count": None, "names": ["a"]}
        option_types = {"names": list[int]}

    with pytest.raises(PluginError, match=r"task 'bad' option 'names': its default \['a'\] is not a list of integers"):
        Registry().add_task(Bad)
    Bad.option_types = {"cuont": int | None}
    with pytest.raises(PluginError, match="declares the type of option 'cuont', which is not among its defaults"):
        Registry().add_task(Bad)


def test_docs_table_of_recipe_keys_is_generated_from_the_schema():
    page = (ROOT / "docs" / "recipe-keys.md").read_text(encoding="utf-8")
    assert page == docs.markdown() + "\n", f"docs/recipe-keys.md is out of date: run {docs.COMMAND}"
    for section in ("recipe", "stage", "finetune", "zero_shot", "optim", "select", "data"):
        assert f"## {section} (" in page
    assert "| `max_text_len` | int ≥ 3 | 20 |" in page and "| `seeds` | list[int] |" in page
    assert "| `allow_same_split` | bool | false |" in page


def test_schema_writes_a_file(tmp_path):
    out = tmp_path / "recipe.schema.json"
    invoke(["schema", "--core", "-o", str(out)])
    schema = json.loads(out.read_text())
    assert set(schema["properties"]) == {"include", *TOP}
    assert schema["$defs"]["stage"]["properties"]["max_text_len"]["default"] == 20
    assert schema["properties"]["seeds"] == {"type": "array", "items": {"type": "integer"},
                                             "description": TOP["seeds"].help}
    assert schema["properties"]["stages"]["items"] == {"$ref": "#/$defs/stage"}


def test_recently_added_keys_are_declared(schemas):
    """Recently added keys are in the schema: seeds, threads, select.allow_same_split, mlm's mask_words."""
    text = textwrap.dedent("""\
        seeds: [0, 1]
        threads: 2
        finetune: [{head: vqa, data: {view: vqa}, select: {allow_same_split: true}}]
        stages: [{data: {view: token}, tasks: {mlm: {mask_words: uniform}}}]
        """)
    assert _problems(schemas["plugins"], parse_yaml(text)) == []
    assert _problems(schemas["plugins"], parse_yaml(text.replace("threads: 2", "threads: 0")))
