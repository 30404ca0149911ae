"""RunContext.open builds a run's context once: threads, device, the primary dataset's info and tokenizer, the
read-only RunInfo the hooks get; a context without a run directory builds models but has no run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from mmcore.blame import LOG_NAME, PluginFailure
from mmcore.builders import build_backbone, build_tasks, new_backbone
from mmcore.context import RunContext, primary_dataset_name
from mmcore.errors import MMCoreError
from mmcore.progress import Reporter
from mmcore.recipeload import prepare_recipe
from mmcore.rundir import RunDir

RECIPE = """\
name: tiny
seed: 5
backbone: {name: lxmert_s, hidden_size: 16, num_attention_heads: 2, intermediate_size: 32, x_layers: 1}
datasets:
  synthworld: {train_images: 16, val_images: 4, test_images: 4, vqa_train_images: 4, retrieval_train_images: 4,
               max_regions: 4, feature_dim: 8, hard_negatives_top: 3}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}, mrfr: {}}, max_steps: 1, batch_size: 4}
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def prepared(tmp_path: Path) -> tuple:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(RECIPE))
    _, plugins, resolved = prepare_recipe(recipe)
    return plugins, resolved


def test_open_resolves_the_primary_datasets_info_and_tokenizer(prepared, tmp_path, cache_dir) -> None:
    plugins, resolved = prepared
    run = RunDir.create(tmp_path / "runs", "tiny", "a")
    ctx = RunContext.open(resolved, plugins, run, Reporter(quiet=True), cache_dir, threads=1)
    world = ctx.dataset("synthworld")
    assert world is ctx.dataset("synthworld")  # prepared once per context
    assert ctx.info == world.info() and ctx.tokenizer is not None and ctx.tokenizer.vocab == world.tokenizer().vocab
    assert ctx.threads.threads == 1 and ctx.threads.source == "--threads" and torch.get_num_threads() == 1
    assert ctx.device == torch.device("cpu") and ctx.seed == 5 and ctx.run is run and ctx.processes.world_size == 1
    facts = ctx.hook_run
    assert facts.run_dir == run.path and facts.recipe_name == "tiny" and facts.seed == 5
    with pytest.raises(TypeError):
        facts.recipe["seed"] = 6  # type: ignore[index]  # read-only, and a copy: the context's recipe stays
    assert ctx.recipe["seed"] == 5


def test_the_builders_take_the_context(prepared, cache_dir) -> None:
    plugins, resolved = prepared
    ctx = RunContext.open(resolved, plugins, None, Reporter(quiet=True), cache_dir, threads=1)
    torch.manual_seed(0)
    backbone = build_backbone(ctx)
    tasks = build_tasks(ctx, resolved["stages"][0], backbone)
    assert set(tasks) == {"mlm", "mrfr"} and next(backbone.parameters()).device.type == "cpu"
    with torch.device("meta"):
        shapes = new_backbone(ctx)
    assert sum(p.numel() for p in shapes.parameters()) == sum(p.numel() for p in backbone.parameters())


def test_a_context_without_a_run_directory_has_no_run(prepared, cache_dir) -> None:
    plugins, resolved = prepared
    ctx = RunContext.open(resolved, plugins, None, Reporter(quiet=True), cache_dir, threads=1)
    with pytest.raises(MMCoreError, match="no run directory"):
        ctx.run
    with pytest.raises(MMCoreError, match="no run directory"):
        ctx.hook_run


def test_a_recipe_without_data_is_sized_by_the_dataset_given_or_refused(prepared, cache_dir) -> None:
    plugins, resolved = prepared
    bare = {**resolved, "stages": [], "finetune": [], "zero_shot": []}
    assert primary_dataset_name(resolved) == "synthworld" and primary_dataset_name(bare) is None
    with pytest.raises(MMCoreError, match="uses no data"):
        RunContext.open(bare, plugins, None, Reporter(quiet=True), cache_dir, threads=1)
    ctx = RunContext.open(bare, plugins, None, Reporter(quiet=True), cache_dir, threads=1, sizing="synthworld")
    assert ctx.info == ctx.dataset("synthworld").info()


def test_a_failing_prepare_while_opening_is_logged_in_the_run(prepared, tmp_path, cache_dir, monkeypatch) -> None:
    plugins, resolved = prepared
    world = plugins.registry.get("dataset", "synthworld").factory

    def prepare(self, progress=None) -> None:
        raise OSError("the disk is gone")

    monkeypatch.setattr(world, "prepare", prepare)
    run = RunDir.create(tmp_path / "runs", "tiny", "a")
    with pytest.raises(PluginFailure, match="prepare"):
        RunContext.open(resolved, plugins, run, Reporter(quiet=True), cache_dir, threads=1)
    assert "the disk is gone" in (run.path / LOG_NAME).read_text()
