"""The paper's protocol: all four downstream tasks in the paper-scale recipes, attribute/category masking in the
phrase stage, selection never on the reported split, no zero-shot score from a head of an earlier stage, and
the token stage on COCO caption images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from mmcore_pretrain.tasks_masked import MLMTask
from torch import nn

from mmcore.api import FOCUS_SPANS, FOCUS_TOKENS, Backbone, DataInfo
from mmcore.data.collate import Collator
from mmcore.data.tokenizer import build_wordpiece, load_tokenizer
from mmcore.data.views import WordMarker
from mmcore.errors import MMCoreError
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
    listed = "fine-tuning: vqa (6 epochs, lr 5e-05), gqa (5 epochs, lr 5e-05), nlvr2 (8 epochs, lr 5e-05), retrieval"
    assert out.count(listed) == len(PAPER)
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
    # `mmcore evaluate --zero-shot` (the final stage) refuses in the same way.
    out = invoke(["evaluate", str(run), "--zero-shot", "--head", "retrieval", "--data", "synthworld:retrieval:test",
                  "--cache-dir", str(tmp_path / "cache"), "--quiet"], code=2)
    assert "no zero-shot head" in out and "(it trained mlm, mrfr)" in " ".join(out.split())


# ---- the phrase stage's MLM masks attribute and category words --------------------------------------------------

ATTRIBUTES, OBJECTS = ["red", "tall", "white"], ["traffic light", "tree", "dog"]
PHRASES = ["red traffic light, tall tree, the sky", "a white dog", "the sky"]


class _Embeddings(Backbone):
    """Only what MLM's constructor reads: the word embeddings and the hidden size."""

    hidden_size = 8

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)

    def word_embeddings(self) -> nn.Embedding:
        return self.embed


@pytest.fixture(scope="module")
def phrase_batch(tmp_path_factory) -> tuple[Any, dict[str, Any]]:
    """(tokenizer, a collated batch of the hand-made phrases with their attribute and category words marked)."""
    folder = tmp_path_factory.mktemp("tok")
    build_wordpiece([*PHRASES, "traffic light"], folder, vocab_size=200, required=["red", "tall", "white"])
    tok = load_tokenizer(folder)
    marker = WordMarker([*ATTRIBUTES, *OBJECTS])
    examples = [{"text": text, **extra} for text, extra in zip(PHRASES, marker.extras(PHRASES))]
    return tok, Collator(tok, 20)(examples)


def _words(tok: Any, batch: dict[str, Any], row: int, where: torch.Tensor) -> list[str]:
    return tok.convert_ids_to_tokens(batch["input_ids"][row][where[row]].tolist())


def test_phrase_views_mark_attribute_and_category_words(phrase_batch) -> None:
    tok, batch = phrase_batch
    focus = batch[FOCUS_TOKENS]
    assert focus.shape == batch["input_ids"].shape and FOCUS_SPANS not in batch
    assert _words(tok, batch, 0, focus) == ["red", "traffic", "light", "tall", "tree"]  # not ",", "the", "sky"
    assert _words(tok, batch, 1, focus) == ["white", "dog"]
    assert not focus[2].any()


def _mlm(tok: Any, **options: Any) -> MLMTask:
    info = DataInfo(vocab_size=len(tok), feature_dim=4, max_regions=2, num_objects=3, num_attributes=3,
                    pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                    mask_token_id=tok.mask_token_id, unk_token_id=tok.unk_token_id,
                    special_token_ids=tuple(tok.all_special_ids), object_token_ids=())
    return MLMTask(info, _Embeddings(len(tok)), **options)


@pytest.mark.parametrize("mask_words", ["focus", "uniform"])
def test_phrase_mlm_masks_the_marked_words_or_falls_back_to_uniform(phrase_batch, mask_words: str) -> None:
    tok, batch = phrase_batch
    content = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], torch.tensor(tok.all_special_ids))
    task = _mlm(tok, mask_prob=1.0, mask_words=mask_words)  # select every eligible token
    corrupted = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    task.corrupt(corrupted, torch.Generator().manual_seed(0))
    selected = corrupted["mlm_labels"] != -100
    if mask_words == "focus":
        assert _words(tok, batch, 0, selected) == ["red", "traffic", "light", "tall", "tree"]
        assert _words(tok, batch, 1, selected) == ["white", "dog"]
    else:
        assert _words(tok, batch, 0, selected) == _words(tok, batch, 0, content)
    assert torch.equal(selected[2], content[2])  # a text without marked words: all its WordPieces
    with pytest.raises(MMCoreError, match="'mask_words' must be one of focus, uniform"):
        _mlm(tok, mask_words="attributes")


def test_phrase_mlm_at_the_usual_rate_selects_only_marked_words(phrase_batch) -> None:
    tok, batch = phrase_batch
    task = _mlm(tok)
    for seed in range(20):
        corrupted = dict(batch, input_ids=batch["input_ids"].clone())
        task.corrupt(corrupted, torch.Generator().manual_seed(seed))
        selected = corrupted["mlm_labels"] != -100
        assert not (selected[:2] & ~batch[FOCUS_TOKENS][:2]).any()


def test_a_batch_mixing_marked_and_unmarked_views_collates_in_either_order(phrase_batch) -> None:
    tok, _ = phrase_batch
    marked = {"text": PHRASES[1], FOCUS_SPANS: WordMarker(OBJECTS).spans(PHRASES[1])}  # "dog" only
    plain = {"text": "a white dog"}  # a sentence-view example: no marks, masked uniformly
    for examples, row in (([marked, plain], 0), ([plain, marked], 1)):
        batch = Collator(tok, 20)(examples)
        assert _words(tok, batch, row, batch[FOCUS_TOKENS]) == ["dog"]
        assert not batch[FOCUS_TOKENS][1 - row].any() and FOCUS_SPANS not in batch


def test_word_marker_matches_whole_names_longest_first_and_never_across_a_comma() -> None:
    marker = WordMarker(["red", "light", "traffic light", "car traffic", "t-shirt", "car"])
    def marked(text: str) -> list[str]:
        return [text[a:b] for a, b in marker.spans(text)]
    assert marked("Red traffic light") == ["Red", "traffic light"]  # case-insensitive, the longer name wins
    assert marked("car, traffic light") == ["car", "traffic light"]  # "car traffic" spans a comma: no match
    assert marked("a white t-shirt") == ["t-shirt"]
    assert marked("lightly redder cars") == []  # whole words only
