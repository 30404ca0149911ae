"""``mmcore export``: transformers loads the model and tokenizer; mmcore loads the export back with equal outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mmcore.api import DataInfo
from mmcore.checkpointing import read_checkpoint
from mmcore.plugins import load_plugins
from tests.helpers import invoke, run_recipe

transformers = pytest.importorskip("transformers")

RECIPE = """\
name: tiny
seed: 3
log_every: 1
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}, mrfr: {}}, max_steps: 2, batch_size: 8, max_text_len: 12}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 2, batch_size: 8}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("export")
    path = run_recipe(tmp, RECIPE, tmp / "cache")
    out = tmp / "exported"
    invoke(["export", str(path), str(out), "--finetune", "vqa", "--cache-dir", str(tmp / "cache")])
    return {"run": path, "out": out, "cache": tmp / "cache", "tmp": tmp}


def dataset_of(run: dict):
    """The run's synthworld dataset, prepared from the test's cache (its tokenizer and its sizes)."""
    recipe = yaml.safe_load((run["run"] / "recipe.resolved.yaml").read_text())
    entry = load_plugins().registry.get("dataset", "synthworld")
    dataset = entry.factory(recipe["datasets"]["synthworld"], run["cache"])
    dataset.prepare(lambda _: None)
    return dataset


def batch(info: DataInfo, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    return {"input_ids": torch.randint(5, info.vocab_size, (2, 7), generator=g) * attention_mask,
            "attention_mask": attention_mask, "visual_feats": torch.randn(2, 4, info.feature_dim, generator=g),
            "visual_pos": torch.rand(2, 4, 4, generator=g), "visual_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
            "position_ids": torch.tensor([[0, 1, 2, 2, 3, 4, 5], [0, 1, 1, 2, 3, 0, 0]])}  # whole-word positions


def test_transformers_loads_the_model_and_the_tokenizer(run):
    out = run["out"]
    model = transformers.LxmertModel.from_pretrained(out)
    ckpt = read_checkpoint(run["run"] / "finetune" / "vqa" / "best.pt")
    theirs = model.state_dict()
    shared = [k for k in ckpt["backbone"] if k in theirs]
    assert len(shared) == len(theirs)  # every transformers parameter comes from the checkpoint
    for key in shared:
        torch.testing.assert_close(theirs[key], ckpt["backbone"][key], rtol=0, atol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    dataset = dataset_of(run)
    text = "a red cube left of a small sphere"
    assert tokenizer(text)["input_ids"] == dataset.tokenizer()(text)["input_ids"]


def test_the_export_holds_head_manifest_and_model_card(run):
    out = run["out"]
    manifest = json.loads((out / "mmcore.json").read_text())
    assert manifest["kind"] == "finetune" and manifest["name"] == "vqa" and manifest["head"]["name"] == "vqa"
    assert sorted(p.name for p in out.iterdir()) == manifest["files"]
    ckpt = read_checkpoint(run["run"] / "finetune" / "vqa" / "best.pt")
    head = load_file(str(out / "head.safetensors"))
    assert head.keys() == ckpt["head"].keys() and all(torch.equal(head[k], ckpt["head"][k]) for k in head)
    card = (out / "README.md").read_text()
    assert "LxmertModel.from_pretrained" in card and "## Recipe" in card and "name: tiny" in card
    assert "## Results of the run" in card and "visual_cls" in card
    assert not list(out.parent.glob(".exported.*"))  # no temporary directory left behind


def test_mmcore_loads_the_export_back_with_equal_outputs(run):
    """The backbone rebuilt from the export (its options and weights: DIR) answers exactly as the checkpoint's."""
    out = run["out"]
    manifest = json.loads((out / "mmcore.json").read_text())
    options = {k: v for k, v in manifest["backbone"].items() if k != "name"}
    plugins = load_plugins()
    factory = plugins.registry.get("backbone", manifest["backbone"]["name"]).factory
    info = dataset_of(run).info()
    torch.manual_seed(123)  # a different initialisation: everything must come from the export
    loaded = factory({**options, "weights": str(out)}, info).eval()
    torch.manual_seed(0)
    original = factory(options, info).eval()
    original.load_state_dict(read_checkpoint(run["run"] / "finetune" / "vqa" / "best.pt")["backbone"])
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))
    data = batch(info)
    with torch.no_grad():
        for mine, theirs in zip(loaded(**data), original(**data)):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_stage_export_by_default_and_clear_errors(run):
    out = run["tmp"] / "stage"
    invoke(["export", str(run["run"]), str(out), "--cache-dir", str(run["cache"])])
    manifest = json.loads((out / "mmcore.json").read_text())
    assert (manifest["kind"], manifest["name"]) == ("stage", "token") and "tasks.safetensors" in manifest["files"]
    tasks = read_checkpoint(run["run"] / "stages" / "token" / "checkpoint.pt")["tasks"]
    assert set(load_file(str(out / "tasks.safetensors"))) == {f"{t}.{k}" for t, state in tasks.items() for k in state}
    said = " ".join(invoke(["export", str(run["run"]), str(out), "--cache-dir", str(run["cache"])], code=2).split())
    assert "exists and is not empty; choose another directory or add --overwrite" in said
    said = " ".join(invoke(["export", str(run["run"]), str(run["tmp"] / "x"), "--finetune", "vq"], code=2).split())
    assert "no fine-tuning 'vq' (did you mean 'vqa'?)" in said
