"""Retrieval evaluation at scale: batched scoring against the per-pair loop, image subsets, shortlists, resuming
an interrupted evaluation, ``mmcore evaluate`` on a tiny run, and the scoring benchmark at a toy size."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mmcore_heads.metrics import first_caption_tr, recall_at_k
from mmcore_heads.retrieval import RetrievalHead
from mmcore_heads.scoring import PairInputs, ScoreMatrix, encode_inputs, naive_scores
from mmcore_heads.shortlist import label_scores, shortlist_mask
from mmcore_synth.dataset import SynthWorld

from mmcore.api import DataInfo
from mmcore.cli import main
from mmcore.data.collate import Collator
from mmcore.errors import MMCoreError
from mmcore.evalcontext import EvalContext
from mmcore.plugins import load_plugins
from mmcore.progress import Reporter

ROOT = Path(__file__).resolve().parents[1]
WORLD = {"train_images": 40, "val_images": 8, "test_images": 8, "vqa_train_images": 16, "retrieval_train_images": 8,
         "max_regions": 6, "feature_dim": 16, "hard_negatives_top": 10}
HIDDEN = 16
TINY = f"""\
name: tiny
seed: 3
log_every: 1
eval_batch_size: 64
backbone: {{name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}}
datasets:
  synthworld: {json.dumps(WORLD)}
stages:
  - {{name: sentence, data: {{view: sentence}}, tasks: {{mlm: {{}}, itm_hs: {{}}}}, max_steps: 2, batch_size: 8}}
zero_shot:
  - {{name: zs_retrieval, head: retrieval, data: {{view: retrieval, split: test}}}}
finetune:
  - {{name: vqa, head: vqa, data: {{view: vqa}}, max_steps: 1, batch_size: 8}}
  - {{name: retrieval, head: retrieval, data: {{view: retrieval}}, max_steps: 2, batch_size: 4}}
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def world(cache_dir: Path) -> SynthWorld:
    dataset = SynthWorld(WORLD, cache_dir / "synthworld")
    dataset.prepare()
    return dataset


@pytest.fixture(scope="module")
def view(world: SynthWorld) -> Any:
    return world.view("retrieval", "test")


@pytest.fixture(scope="module")
def backbone(world: SynthWorld) -> torch.nn.Module:
    torch.manual_seed(0)
    # A wide initialisation: with BERT's 0.02 the product pooler's output, and so every score, is nearly constant.
    options = {"hidden_size": HIDDEN, "num_attention_heads": 2, "intermediate_size": 32, "x_layers": 1,
               "initializer_range": 0.5}
    return load_plugins().registry.get("backbone", "lxmert_s").factory(options, world.info()).eval()


class RecordingCtx(EvalContext):
    """The engine's EvalContext on the CPU, recording each bar as [total, advanced, first advance]."""

    def __init__(self, world: SynthWorld) -> None:
        super().__init__(Collator(world.tokenizer(), 20), torch.device("cpu"), 16, Reporter(quiet=True))
        self.bars: list[list[int]] = []

    def progress(self, total: int, description: str) -> Callable[..., None]:
        bar = [total, 0, -1]
        self.bars.append(bar)

        def advance(n: int, info: str | None = None) -> None:
            bar[2] = n if bar[2] < 0 else bar[2]
            bar[1] += n

        return advance


def make_head(world: SynthWorld, **options: Any) -> RetrievalHead:
    torch.manual_seed(1)
    head = RetrievalHead(world.info(), HIDDEN, {}, **options).eval()
    with torch.no_grad():  # a matching score of a useful scale (BERT's init gives scores near 0)
        head.match.weight.normal_(std=1.0)
    return head


def scored_pairs(backbone: torch.nn.Module) -> tuple[list[int], Any]:
    """A counter of the pairs the backbone encodes, and the hook handle to remove. It counts the pooler's rows:
    whole pairs (``forward``) and pairs through the backbone's pair encoder both end there, once per pair."""
    count = [0]
    handle = backbone.pooler.register_forward_hook(lambda module, args, out: count.__setitem__(
        0, count[0] + out.shape[0]))
    return count, handle


def metrics_of(scores: torch.Tensor, owners: list[int]) -> dict[str, float]:
    return {**recall_at_k(scores, owners), **first_caption_tr(scores, owners)}


@pytest.fixture(scope="module")
def full(world: SynthWorld, view: Any, backbone: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return make_head(world).score_matrix(backbone, view, RecordingCtx(world))


# ---- batched scoring -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def naive(world: SynthWorld, view: Any, backbone: torch.nn.Module) -> torch.Tensor:
    """The per-pair loop's scores of the first 3 images' captions against those images."""
    head, ctx = make_head(world), RecordingCtx(world)
    captions = [c for c, owner in zip(view.captions, view.caption_image) if owner < 3]
    with torch.no_grad():
        return naive_scores(lambda b: head.scores(backbone, b), ctx.collate, captions, view.images[:3], view.image)


@pytest.mark.parametrize("pairs", [4, 512])
def test_batched_scores_equal_the_per_pair_loop(world, view, backbone, naive, pairs) -> None:
    head = make_head(world, eval_batch_pairs=pairs, images=3, progress_every=2)
    ctx = RecordingCtx(world)
    with torch.no_grad():
        batched = head.score_matrix(backbone, view, ctx)
    assert batched.shape == naive.shape == (15, 3)
    assert torch.allclose(batched, naive, atol=1e-5, rtol=0)
    assert naive.std() > 0.5  # the check compares real, distinct scores
    assert ctx.bars == [[45, 45, min(45, 2 * pairs)]]  # one bar of pairs, moved every 2 batches


def test_image_subset_metrics_equal_the_sub_matrix_metrics(world, view, backbone, full) -> None:
    head = make_head(world, images=3)
    with torch.no_grad():
        metrics = head.evaluate(backbone, view, RecordingCtx(world))
    rows = [c for c, owner in enumerate(view.caption_image) if owner < 3]
    sub = full[rows][:, :3]
    assert metrics == metrics_of(sub, [view.caption_image[c] for c in rows])
    assert metrics != metrics_of(full, view.caption_image)  # 3 images are not the whole view


# ---- shortlists ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_stage", ["labels", "backbone"])
def test_a_shortlist_of_every_image_equals_full_scoring(world, view, backbone, full, first_stage) -> None:
    head = make_head(world, shortlist=len(view.images), shortlist_by=first_stage)
    with torch.no_grad():
        matrix = head.score_matrix(backbone, view, RecordingCtx(world))
        metrics = head.evaluate(backbone, view, RecordingCtx(world))
    assert torch.allclose(matrix, full, atol=1e-6, rtol=0)
    assert metrics == metrics_of(full, view.caption_image)


def test_a_short_shortlist_scores_only_its_pairs(world, view, backbone, full) -> None:
    head = make_head(world, shortlist=2)
    ctx = RecordingCtx(world)
    count, handle = scored_pairs(backbone)
    try:
        with torch.no_grad():
            matrix = head.score_matrix(backbone, view, ctx)
    finally:
        handle.remove()
    mask = torch.from_numpy(shortlist_mask(label_scores(encode_inputs(ctx, view.captions, view.images, view.image),
                                                        world.info()), 2))
    assert count[0] == int(mask.sum()) < matrix.numel()
    assert ctx.bars == [[int(mask.sum()), int(mask.sum()), int(mask.sum())]]
    assert torch.allclose(matrix[mask], full[mask], atol=1e-6, rtol=0)
    assert bool((matrix[~mask] == float("-inf")).all())
    assert bool((mask.sum(dim=1) >= 2).all()) and bool((mask.sum(dim=0) >= 2).all())


def test_shortlist_mask_takes_top_k_of_rows_and_of_columns() -> None:
    first = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    # Rows: caption 0 -> image 0, caption 1 -> image 1. Columns: image 0 -> caption 0, 1 -> 1, 2 -> 1.
    assert shortlist_mask(first, 1).tolist() == [[True, False, False], [False, True, True]]
    # Ties go to the lower index.
    assert shortlist_mask(torch.zeros(2, 3), 1).tolist() == [[True, True, True], [True, False, False]]


def test_label_scores_are_cosines_of_object_word_piece_sets() -> None:
    info = DataInfo(vocab_size=10, feature_dim=2, max_regions=2, num_objects=3, num_attributes=1, pad_token_id=0,
                    cls_token_id=2, sep_token_id=3, mask_token_id=4, unk_token_id=1, special_token_ids=(0, 1, 2, 3, 4),
                    object_token_ids=((5,), (6, 7), (8,)))
    ids = torch.tensor([[2, 5, 6, 3, 0], [2, 9, 3, 0, 0]])
    inputs = PairInputs(
        text={"input_ids": ids, "attention_mask": (ids > 0).long()},
        # image 0 sees objects 0 and 1 (pieces 5, 6, 7); image 1 sees object 2 (its second region is padding).
        image={"visual_feats": torch.zeros(2, 2, 2), "obj_labels": torch.tensor([[0, 1], [2, 0]]),
               "visual_mask": torch.tensor([[1, 1], [1, 0]])},
        lengths=np.array([4, 3]),
    )
    expected = torch.tensor([[2 / math.sqrt(2 * 3), 0.0], [0.0, 0.0]])  # caption 0 = {5, 6}; caption 1 = {}
    assert torch.allclose(label_scores(inputs, info), expected, atol=1e-6)


# ---- resuming ------------------------------------------------------------------------------------------------


class Interrupt(RuntimeError):
    pass


# A kill (any error) loses the batches since the last write (every 3 batches); Ctrl-C writes what was scored.
@pytest.mark.parametrize(("stop", "saved_pairs"), [(Interrupt, 3 * 8), (KeyboardInterrupt, 5 * 8)])
def test_an_interrupted_evaluation_resumes_to_the_same_matrix(world, view, backbone, tmp_path, stop,
                                                              saved_pairs) -> None:
    batching = {"images": 4, "eval_batch_pairs": 8, "checkpoint_every": 3, "progress_every": 1}
    options = {"score_cache": str(tmp_path / "scores.npz"), **batching}
    with torch.no_grad():
        uninterrupted = make_head(world, **batching).score_matrix(backbone, view, RecordingCtx(world))
    first = make_head(world, **options)

    def stop_after_five(batches: int) -> None:
        if batches == 5:
            raise stop

    first.batch_hook = stop_after_five
    with torch.no_grad(), pytest.raises(stop):
        first.score_matrix(backbone, view, RecordingCtx(world))
    with np.load(tmp_path / "scores.npz") as saved:
        assert int(saved["done"].sum()) == saved_pairs

    again = make_head(world, **options)
    ctx = RecordingCtx(world)
    count, handle = scored_pairs(backbone)
    try:
        with torch.no_grad():
            resumed = again.score_matrix(backbone, view, ctx)
    finally:
        handle.remove()
    total = uninterrupted.numel()
    assert count[0] == total - saved_pairs
    assert ctx.bars == [[total, total, saved_pairs]]  # the bar starts with the pairs already done
    assert torch.allclose(resumed, uninterrupted, atol=1e-6, rtol=0)

    # A cache written for other weights is not reused: the matched logit's bias up by 1 moves every score by 1.
    other = make_head(world, **options)
    with torch.no_grad():
        other.match.bias[1] += 1.0
        count, handle = scored_pairs(backbone)
        try:
            shifted = other.score_matrix(backbone, view, RecordingCtx(world))
        finally:
            handle.remove()
    assert count[0] == total
    assert torch.allclose(shifted, uninterrupted + 1.0, atol=1e-5, rtol=0)


# ---- mmcore evaluate -----------------------------------------------------------------------------------------


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args, terminal_width=200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    base = tmp_path_factory.mktemp("runs")
    recipe = base / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    result = invoke(["run", str(recipe), "--output-dir", str(base), "--run-name", "a", "--cache-dir",
                     str(cache_dir), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    return base / "tiny" / "a"


@pytest.mark.parametrize(("flags", "entry", "written"), [
    (["--zero-shot"], "zs_retrieval", "stages/sentence"),
    ([], "retrieval", "finetune/retrieval"),
])
def test_mmcore_evaluate_reproduces_the_run_results(run_dir, cache_dir, flags, entry, written) -> None:
    result = invoke(["evaluate", str(run_dir), "--head", "retrieval", "--data", "synthworld:retrieval:test",
                     "--cache-dir", str(cache_dir), "--quiet", *flags])
    assert result.exit_code == 0, (result.output, result.exception)
    recorded = json.loads((run_dir / "results.json").read_text())[entry]["metrics"]
    out = json.loads((run_dir / written / "eval_retrieval_synthworld_retrieval_test.json").read_text())
    assert out["metrics"] == recorded
    assert out["kind"] == ("zero_shot" if flags else "finetune")
    assert "IR R@1" in result.output and f"{100 * recorded['ir_r1']:.2f}" in result.output


def test_mmcore_evaluate_reproduces_vqa_and_takes_a_bare_checkpoint(run_dir, cache_dir, tmp_path) -> None:
    bare = tmp_path / "vqa.pt"
    shutil.copy(run_dir / "finetune" / "vqa" / "checkpoint.pt", bare)
    result = invoke(["evaluate", str(bare), "--recipe", str(run_dir / "recipe.resolved.yaml"), "--head", "vqa",
                     "--data", "synthworld:vqa", "--cache-dir", str(cache_dir), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    recorded = json.loads((run_dir / "results.json").read_text())["vqa"]["metrics"]
    assert json.loads((tmp_path / "eval_vqa_synthworld_vqa_test.json").read_text())["metrics"] == recorded


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda run, tmp: [str(tmp / "nowhere"), "--head", "retrieval"], "no such run directory or checkpoint"),
    (lambda run, tmp: [str(tmp), "--head", "retrieval"], "neither a run directory"),
    (lambda run, tmp: [str(run), "--head", "retrieve"], "unknown head 'retrieve' (did you mean 'retrieval'?)"),
    (lambda run, tmp: [str(run / "stages" / "sentence" / "checkpoint.pt"), "--head", "vqa"],
     "head 'vqa' needs a fine-tuned checkpoint"),
    (lambda run, tmp: [str(run), "--head", "vqa", "--images", "3"], "--images: head 'vqa' has no option 'images'"),
    (lambda run, tmp: [str(run), "--head", "retrieval", "--data", "synthworld"], "expected DATASET:VIEW"),
    (lambda run, tmp: [str(run), "--head", "retrieval", "--data", "synthworld:retrival"], "has no view 'retrival'"),
    (lambda run, tmp: [str(run), "--head", "retrieval", "--set", "shortlist=-1"], "'shortlist' must be an integer"),
])
def test_mmcore_evaluate_errors_are_clear(run_dir, cache_dir, tmp_path, make_args, message) -> None:
    args = make_args(run_dir, tmp_path)
    if "--data" not in args:
        args += ["--data", "synthworld:vqa" if "vqa" in args else "synthworld:retrieval"]
    result = invoke(["evaluate", *args, "--cache-dir", str(cache_dir), "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_mmcore_evaluate_needs_a_recipe_for_a_checkpoint_outside_a_run(run_dir, cache_dir, tmp_path) -> None:
    bare = tmp_path / "stage.pt"
    shutil.copy(run_dir / "stages" / "sentence" / "checkpoint.pt", bare)
    result = invoke(["evaluate", str(bare), "--head", "retrieval", "--data", "synthworld:retrieval",
                     "--cache-dir", str(cache_dir)])
    assert result.exit_code == 2 and "--recipe" in result.output


# ---- the benchmark -------------------------------------------------------------------------------------------


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_retrieval_eval", ROOT / "benchmarks" / "bench_retrieval_eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_runs_at_a_toy_size_and_agrees_with_the_naive_loop() -> None:
    bench = load_bench()
    cfg = bench.BenchConfig(hidden=16, layers=1, heads=2, regions=3, feat_dim=8, tokens=6, vocab=1100, images=3,
                            captions_per_image=2, batch_pairs=5, naive_pairs=4)
    results, diffs = bench.run_benchmark(cfg)
    assert [r.pairs for r in results] == [18, 18, 4] and all(r.seconds > 0 for r in results)
    assert set(diffs) == {"pair encoder vs whole pairs", "pair encoder vs naive"}
    assert all(d < 1e-5 for d in diffs.values())
    table = bench.format_table(cfg, results)
    assert table.count("\n") == 4 and "| pair encoder (5 pairs/pass) | 18 |" in table
    assert "| whole pairs (5 pairs/pass) | 18 |" in table
    assert bench.duration(2 * 3600 + 5 * 60) == "2 h 05 min" and bench.duration(61) == "1 min 01 s"


def test_a_damaged_score_cache_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "scores.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(MMCoreError, match="scores.npz is damaged or not a score cache; delete it"):
        ScoreMatrix((2, 2), tmp_path / "scores.npz", "key")
