"""Recipes: includes, overrides, merge order, and every validation error naming file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mmcore.api import PAIR_FIELDS, Dataset, Head, Task
from mmcore.errors import RecipeError
from mmcore.recipe import load_recipe
from mmcore.registry import Registry
from mmcore.validate import RecipeInvalid, resolve


class FakeTask(Task):
    """A task needing only pair fields."""

    name = "fake"
    defaults = {"mask_prob": 0.15}


class NeedsAnswers(Task):
    """A task needing VQA targets."""

    name = "needs_answers"
    requires = PAIR_FIELDS | {"vqa_target"}


class FakeHead(Head):
    """A head."""

    name = "fakehead"
    defaults = {"scale": 1}


class FakeData(Dataset):
    """A dataset with two views."""

    name = "fakedata"
    defaults = {"images": 10}
    views = {"token": PAIR_FIELDS, "vqa": PAIR_FIELDS | {"vqa_target"}}


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.add_backbone("bb", lambda config, info: None, defaults={"hidden_size": 8, "x_layers": 5})
    reg.add_task(FakeTask)
    reg.add_task(NeedsAnswers)
    reg.add_head(FakeHead)
    reg.add_dataset(FakeData)
    return reg


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


BASE = """\
backbone: {name: bb}
datasets: {fakedata: {}}
stages:
  - name: one
    data: {view: token}
    tasks: {fake: {}}
    epochs: 1
finetune:
  - {head: fakehead, data: {view: vqa}}
"""


def errors_of(tmp_path: Path, registry: Registry, text: str, overrides: tuple[str, ...] = ()) -> list[RecipeError]:
    path = write(tmp_path, "r.yaml", text)
    with pytest.raises(RecipeInvalid) as info:
        resolve(load_recipe(path, overrides), registry)
    return info.value.errors


def test_valid_recipe_resolves_with_plugin_defaults(tmp_path, registry):
    resolved = resolve(load_recipe(write(tmp_path, "r.yaml", BASE)), registry)
    assert resolved["backbone"] == {"name": "bb", "hidden_size": 8, "x_layers": 5}
    assert resolved["datasets"] == {"fakedata": {"images": 10}}
    stage = resolved["stages"][0]
    assert stage["tasks"] == {"fake": {"weight": 1.0, "mask_prob": 0.15}}
    assert stage["data"][0]["dataset"] == "fakedata" and stage["data"][0]["split"] == "train"
    assert stage["optim"]["lr"] > 0
    assert resolved["finetune"][0]["options"] == {"scale": 1}
    assert resolved["name"] == "r"


def test_merge_order_defaults_include_recipe_set(tmp_path, registry):
    write(tmp_path, "base/a.yaml", "backbone: {name: bb, hidden_size: 16}\nseed: 1\n")
    write(tmp_path, "base/b.yaml", "backbone: {hidden_size: 32}\nseed: 2\nlog_every: 7\n")
    path = write(tmp_path, "r.yaml", "include: [base/a.yaml, base/b.yaml]\nseed: 3\n" + BASE.replace("backbone: {name: bb}\n", ""))
    recipe = load_recipe(path, ("seed=4",))
    resolved = resolve(recipe, registry)
    assert resolved["backbone"]["hidden_size"] == 32  # later include wins over earlier
    assert resolved["backbone"]["x_layers"] == 5  # plugin default fills the rest
    assert resolved["log_every"] == 7
    assert resolved["seed"] == 4  # --set wins over the recipe, which wins over includes
    assert recipe.where(("backbone", "hidden_size"))[0].endswith("b.yaml")


def test_set_is_typed_and_addresses_list_items_by_name(tmp_path, registry):
    path = write(tmp_path, "r.yaml", BASE)
    recipe = load_recipe(path, ("stages.one.epochs=3", "stages.0.optim.lr=2e-4", "backbone.hidden_size=64",
                                "stages.one.tasks.fake.mask_prob=0.3"))
    resolved = resolve(recipe, registry)
    assert resolved["stages"][0]["epochs"] == 3
    assert resolved["stages"][0]["optim"]["lr"] == pytest.approx(2e-4)
    assert resolved["backbone"]["hidden_size"] == 64 and isinstance(resolved["backbone"]["hidden_size"], int)
    assert resolved["stages"][0]["tasks"]["fake"]["mask_prob"] == pytest.approx(0.3)


def test_unknown_key_suggests_and_names_file_line_key(tmp_path, registry):
    errors = errors_of(tmp_path, registry, BASE.replace("    epochs: 1\n", "    epochs: 1\n    epohcs: 2\n"))
    assert len(errors) == 1
    err = errors[0]
    assert err.key == "stages[0].epohcs" and err.line == 8 and err.file.endswith("r.yaml")
    assert "did you mean 'epochs'" in str(err)


def test_unknown_plugin_names_list_what_exists(tmp_path, registry):
    errors = errors_of(tmp_path, registry, BASE.replace("tasks: {fake: {}}", "tasks: {fkae: {}}"))
    message = str(errors[0])
    assert "unknown task 'fkae'" in message and "did you mean 'fake'" in message and "needs_answers" in message
    errors = errors_of(tmp_path, registry, BASE.replace("name: bb", "name: nope"))
    assert "unknown backbone 'nope'" in str(errors[0]) and "known backbones: bb" in str(errors[0])


def test_unknown_plugin_option(tmp_path, registry):
    errors = errors_of(tmp_path, registry, BASE.replace("tasks: {fake: {}}", "tasks: {fake: {mask_prb: 0.2}}"))
    assert errors[0].key == "stages[0].tasks.fake.mask_prb" and "did you mean 'mask_prob'" in str(errors[0])


def test_task_requires_fields_the_view_does_not_provide(tmp_path, registry):
    errors = errors_of(tmp_path, registry, BASE.replace("tasks: {fake: {}}", "tasks: {needs_answers: {}}"))
    message = str(errors[0])
    assert "stage 'one'" in message and "needs_answers" in message and "vqa_target" in message
    assert "fakedata/token" in message


def test_bad_numbers(tmp_path, registry):
    text = BASE.replace("epochs: 1", "epochs: -1\n    optim: {lr: 0}\n    batch_size: two")
    errors = errors_of(tmp_path, registry, text)
    by_key = {e.key: str(e) for e in errors}
    assert "must be >= 0" in by_key["stages[0].epochs"]
    assert "must be > 0" in by_key["stages[0].optim.lr"]
    assert "must be an integer" in by_key["stages[0].batch_size"]


def test_missing_files(tmp_path, registry):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "r.yaml", "include: [nope.yaml]\n" + BASE))
    assert "included file not found" in str(info.value) and info.value.key == "include[0]"
    errors = errors_of(tmp_path, registry, BASE.replace("    epochs: 1\n", "    epochs: 1\n    init: missing.pt\n"))
    assert "checkpoint not found: missing.pt" in str(errors[0])


def test_cyclic_include(tmp_path):
    write(tmp_path, "a.yaml", "include: [b.yaml]\n")
    write(tmp_path, "b.yaml", "include: [a.yaml]\n")
    with pytest.raises(RecipeError, match="cyclic include"):
        load_recipe(tmp_path / "a.yaml")


def test_yaml_syntax_error_has_line(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "r.yaml", "name: x\nstages: [\n  {name: a\n"))
    assert info.value.line is not None and "invalid YAML" in str(info.value)


def test_bad_override_key(tmp_path, registry):
    with pytest.raises(RecipeError, match="no item 'missing'"):
        load_recipe(write(tmp_path, "r.yaml", BASE), ("stages.missing.epochs=2",))
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(write(tmp_path, "r.yaml", BASE), ("stages",))


def test_all_errors_are_reported_together(tmp_path, registry):
    text = BASE.replace("name: bb", "name: nope").replace("tasks: {fake: {}}", "tasks: {zzz: {}}")
    assert len(errors_of(tmp_path, registry, text)) == 2


def test_finetune_epochs_default_to_the_heads_paper_values(tmp_path) -> None:
    from mmcore.plugins import load_plugins
    from mmcore.recipe import load_recipe
    from mmcore.validate import resolve

    path = tmp_path / "r.yaml"
    path.write_text(
        "backbone: {name: lxmert_s}\ndatasets: {synthworld: {}}\n"
        "finetune:\n"
        "  - {head: vqa, data: {view: vqa}}\n"
        "  - {head: gqa, data: {view: gqa}}\n"
        "  - {head: nlvr2, data: {view: nlvr2}}\n"
        "  - {head: retrieval, data: {view: retrieval}}\n"
        "  - {head: vqa, name: short, data: {view: vqa}, epochs: 2}\n")
    resolved = resolve(load_recipe(path), load_plugins().registry)
    assert [f["epochs"] for f in resolved["finetune"]] == [6, 5, 8, 8, 2]
    assert all(f["optim"]["lr"] == 5.0e-5 and f["batch_size"] == 32 for f in resolved["finetune"])
