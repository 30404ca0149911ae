"""Fine-tuning model selection (validation after every epoch, best.pt, test metrics of the best epoch) and the
engine's per-evaluation scratch folder that makes a retrieval evaluation resumable."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import invoke, run_recipe
from mmcore_heads.retrieval import RetrievalHead
from mmcore_synth.dataset import SynthWorld

from mmcore.cli import main
from mmcore.data.collate import Collator
from mmcore.evalcontext import EvalContext
from mmcore.plugins import load_plugins
from mmcore.progress import Reporter
from mmcore.rundir import RunDir

WORLD = {"train_images": 40, "val_images": 8, "test_images": 8, "vqa_train_images": 16, "retrieval_train_images": 8,
         "max_regions": 6, "feature_dim": 16, "hard_negatives_top": 10}
RECIPE = f"""\
name: tiny
seed: 3
log_every: 1
eval_batch_size: 64
backbone: {{name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}}
datasets:
  synthworld: {json.dumps(WORLD)}
stages: []
finetune:
  - {{name: vqa, head: vqa, data: {{view: vqa, limit: 16}}, epochs: 3, batch_size: 8, optim: {{lr: 3.0e-3}}}}
  - {{name: vqa_last, head: vqa, data: {{view: vqa, limit: 8}}, epochs: 1, batch_size: 8, select: {{split: dev}}}}
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return run_recipe(tmp_path_factory.mktemp("runs"), RECIPE, cache_dir)


def test_each_epoch_is_validated_and_the_best_one_is_tested(run: Path, cache_dir: Path) -> None:
    records = [r for r in RunDir(run).read_metrics() if r["scope"] == "vqa" and r.get("split") == "val"]
    # 16 examples of batch 8: 2 steps an epoch, validated after steps 2, 4 and 6.
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 2), (1, 4), (2, 6)]
    values = [r["val_accuracy"] for r in records]
    result = json.loads((run / "results.json").read_text())["vqa"]
    best = int(np.argmax(values))  # the first of equal values, as selection keeps the earlier epoch
    assert result["best_epoch"] == best
    assert result["selection"]["split"] == "val" and result["selection"]["metric"] == "accuracy"
    assert result["selection"]["value"] == pytest.approx(values[best], abs=1e-6)
    assert result["split"] == "test" and result["steps"] == 6
    saved = torch.load(run / "finetune" / "vqa" / "best.pt", weights_only=False)
    assert saved["epoch"] == best and saved["step"] == 2 * (best + 1)
    # The reported test metric is the best epoch's: evaluating best.pt again gives it exactly.
    invoke(["evaluate", str(run / "finetune" / "vqa" / "best.pt"), "--head", "vqa", "--data", "synthworld:vqa",
            "--cache-dir", str(cache_dir), "--quiet"])
    again = json.loads((run / "finetune" / "vqa" / "eval_vqa_synthworld_vqa_test.json").read_text())
    assert again["metrics"] == result["metrics"]


def test_without_a_validation_split_the_last_epoch_is_reported(run: Path) -> None:
    result = json.loads((run / "results.json").read_text())["vqa_last"]
    assert "best_epoch" not in result and result["selection"]["split"] is None
    assert "'dev'" in result["selection"]["note"] and "last epoch" in result["selection"]["note"]
    assert not (run / "finetune" / "vqa_last" / "best.pt").exists()
    assert not [r for r in RunDir(run).read_metrics() if r["scope"] == "vqa_last" and "split" in r]


def test_summary_has_the_papers_columns(run: Path) -> None:
    text = (run / "summary.md").read_text()
    vqa = json.loads((run / "results.json").read_text())["vqa"]["metrics"]["accuracy"]
    assert "| run | VQA acc |" in text and f"| tiny | {100 * vqa:.2f} |" in text
    assert "IR R@1" not in text.split("## Results (%)")[1].split("##")[0]  # no retrieval evaluated: no column


class Interrupt(Exception):
    pass


def test_a_retrieval_evaluation_resumes_from_the_engine_scratch_folder(tmp_path: Path, cache_dir: Path) -> None:
    world = SynthWorld(WORLD, cache_dir / "synthworld")
    world.prepare()
    view = world.view("retrieval", "test")
    torch.manual_seed(0)
    backbone = load_plugins().registry.get("backbone", "lxmert_s").factory(
        {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "x_layers": 1}, world.info()).eval()
    options = {"images": 4, "eval_batch_pairs": 8, "checkpoint_every": 3, "progress_every": 1}  # no score_cache
    scratch = tmp_path / "eval" / "zs_retrieval"

    def ctx() -> EvalContext:
        return EvalContext(Collator(world.tokenizer(), 20), torch.device("cpu"), 16, Reporter(quiet=True), scratch)

    def head() -> RetrievalHead:
        torch.manual_seed(1)
        return RetrievalHead(world.info(), 16, {}, **options).eval()

    with torch.no_grad():
        uninterrupted = head().score_matrix(backbone, view, EvalContext(
            Collator(world.tokenizer(), 20), torch.device("cpu"), 16, Reporter(quiet=True)))
    assert not scratch.exists()  # no scratch folder given: nothing written
    first = head()

    def stop_after_five(batches: int) -> None:
        if batches == 5:
            raise Interrupt

    first.batch_hook = stop_after_five
    with torch.no_grad(), pytest.raises(Interrupt):
        first.score_matrix(backbone, view, ctx())
    with np.load(scratch / "scores.npz") as saved:
        done = int(saved["done"].sum())
    assert done == 3 * 8  # written every 3 batches of 8 pairs
    count = [0]  # pairs encoded: whole pairs and pairs through the backbone's pair encoder both end in its pooler
    handle = backbone.pooler.register_forward_hook(lambda module, args, out: count.__setitem__(
        0, count[0] + out.shape[0]))
    try:
        with torch.no_grad():
            resumed = head().score_matrix(backbone, view, ctx())
    finally:
        handle.remove()
    assert count[0] == uninterrupted.numel() - done  # only the pairs not yet scored
    assert torch.allclose(resumed, uninterrupted, atol=1e-6, rtol=0)


def test_a_bad_select_key_is_located(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(textwrap.dedent(RECIPE).replace("select: {split: dev}", "select: {split: dev, every: 1}"))
    result = CliRunner().invoke(main, ["validate", str(recipe)], terminal_width=200)
    assert result.exit_code == 2
    assert "finetune[1].select.every" in result.output and "unknown key 'every'" in result.output
