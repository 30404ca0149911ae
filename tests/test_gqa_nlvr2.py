"""GQA and NLVR2: synthworld's views and their text, the real-format readers, the ``gqa``/``nlvr2`` heads,
prediction files, and a tiny recipe that fine-tunes both through the CLI."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mmcore_heads.gqa import GQAHead
from mmcore_heads.metrics import classification_accuracy, exact_match_accuracy
from mmcore_heads.nlvr2 import NLVR2Head, stack_images
from mmcore_heads.predictions import (
    write_gqa_predictions,
    write_nlvr2_predictions,
    write_vqa_predictions,
)
from mmcore_heads.vqa import VQAHead
from mmcore_lxmert import plugin as lxmert_plugin
from mmcore_synth.dataset import SynthWorld
from mmcore_synth.language import plural
from mmcore_synth.reasoning import gqa_questions, nlvr2_statement, references
from mmcore_synth.world import (
    COLOURS,
    MATERIALS,
    SALIENT,
    Scene,
    relation,
    sample_scene,
)
from torch import nn
from torch.nn import functional as F

from mmcore.api import SECOND_IMAGE_FIELDS, TEXT_FIELDS, Batch, Example, ExampleSource
from mmcore.cli import main
from mmcore.data import annotations as ann
from mmcore.data.collate import Collator
from mmcore.errors import MMCoreError
from mmcore.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"train_images": 40, "val_images": 8, "test_images": 8, "vqa_train_images": 10, "retrieval_train_images": 8,
         "gqa_train_images": 12, "nlvr2_train_pairs": 20, "feature_dim": 16, "max_regions": 8,
         "hard_negatives_top": 5}
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> SynthWorld:
    ds = SynthWorld(SMALL, tmp_path_factory.mktemp("cache"))
    ds.prepare()
    return ds


def tiny_backbone(world: SynthWorld, seed: int = 0) -> nn.Module:
    registry = Registry()
    lxmert_plugin.mmcore_register_backbones(registry)
    torch.manual_seed(seed)
    config = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "x_layers": 1}
    return registry.get("backbone", "lxmert_s").factory(config, world.info())


class Ctx:
    """A CPU EvalContext over the real collator."""

    def __init__(self, collator: Collator, batch_size: int) -> None:
        self.device, self.batch_size, self._collator = torch.device("cpu"), batch_size, collator

    def collate(self, examples: list[Example]) -> Batch:
        return self._collator(examples)

    def progress(self, total: int, description: str) -> Callable[[int], None]:
        return lambda n: None

    def batches(self, examples: Sequence[Example], description: str) -> Iterator[Batch]:
        for start in range(0, len(examples), self.batch_size):
            yield self.collate([examples[i] for i in range(start, min(start + self.batch_size, len(examples)))])


# ---- the generated files, in the real formats ---------------------------------------------------------------


def test_gqa_files_are_gqa_json_with_an_answer_table(world: SynthWorld) -> None:
    table = ann.read_answer_file(world.directory / "gqa_trainval_ans2label.json")
    assert world.info().answers["gqa"] == tuple(table) and len(set(table)) == len(table)
    for split in SPLITS:
        raw = json.loads((world.directory / f"gqa_{split}.json").read_text())
        assert raw and all(set(r) == {"img_id", "label", "question_id", "sent"} for r in raw)
        # GQA's ids are strings; zero-padded ones prove they are never read as numbers.
        assert all(re.fullmatch(r"\d{8}", r["question_id"]) for r in raw)
        assert all(len(r["label"]) == 1 and list(r["label"].values()) == [1.0] for r in raw)
        if split != "test":
            assert all(a in table for r in raw for a in r["label"])
    train_images = {r["img_id"] for r in ann.read_gqa(world.directory / "gqa_train.json")}
    assert train_images <= {f"synth_train_{i:05d}" for i in range(SMALL["gqa_train_images"])}


def test_nlvr2_files_are_nlvr2_json(world: SynthWorld) -> None:
    for split in SPLITS:
        raw = json.loads((world.directory / f"nlvr2_{split}.json").read_text())
        expected = SMALL["nlvr2_train_pairs"] if split == "train" else 2 * SMALL[f"{split}_images"]
        assert len(raw) == expected
        assert all(set(r) == {"identifier", "img0", "img1", "label", "sent", "uid"} for r in raw)
        assert all(r["label"] in (0, 1) and r["img0"] != r["img1"] for r in raw)
        assert all(r["img0"].startswith(f"synth_{split}_") and r["img1"].startswith(f"synth_{split}_") for r in raw)
        assert len({r["identifier"] for r in raw}) == len(raw)


@pytest.mark.parametrize("name", ["gqa", "nlvr2"])
@pytest.mark.parametrize("split", SPLITS)
def test_views_provide_declared_fields(world: SynthWorld, name: str, split: str) -> None:
    view = world.view(name, split)
    assert isinstance(view, ExampleSource) and len(view) > 0
    examples = [view[i] for i in range(min(5, len(view)))]
    declared = SynthWorld.views[name]
    o, f = SMALL["max_regions"], SMALL["feature_dim"]
    for ex in examples:
        assert (declared - TEXT_FIELDS) | {"text"} <= set(ex)
    batch = Collator(world.tokenizer())(examples)
    assert declared <= set(batch)
    assert batch["visual_feats"].shape == (len(examples), o, f)
    if name == "gqa":
        answers = world.info().answers["gqa"]
        records = ann.read_gqa(world.directory / f"gqa_{split}.json")
        for i, ex in enumerate(examples):
            (gold,) = records[i]["label"]
            assert isinstance(ex["question_id"], str) and ex["question_id"] == records[i]["question_id"]
            if gold in answers:  # a test answer may be missing from the train+val table
                assert ex["gqa_target"].tolist() == [float(a == gold) for a in answers]
        assert batch["gqa_target"].shape == (len(examples), len(answers))
    else:
        assert SECOND_IMAGE_FIELDS <= set(batch) and batch["visual_feats_1"].shape == (len(examples), o, f)
        records = ann.read_nlvr2(world.directory / f"nlvr2_{split}.json")
        for i, ex in enumerate(examples):
            assert ex["img_id"] == records[i]["img0"] and ex["img_id_1"] == records[i]["img1"]
            right = world.store().image(records[i]["img1"])
            assert np.array_equal(ex["visual_feats_1"], right["visual_feats"])
            assert np.array_equal(ex["visual_mask_1"], right["visual_mask"])
            assert ex["nlvr2_label"] == records[i]["label"] and ex["identifier"] == records[i]["identifier"]
        assert batch["nlvr2_label"].dtype == torch.long and batch["img_id_1"] == [ex["img_id_1"] for ex in examples]


def test_nlvr2_view_source_methods(world: SynthWorld) -> None:
    view = world.view("nlvr2", "val")
    ids = view.image_ids()
    assert set(ids) == {f"synth_val_{i:05d}" for i in range(SMALL["val_images"])}
    rng = random.Random(0)
    for _ in range(20):
        text = view.random_text(rng, ids[0])
        assert any(r["sent"] == text and ids[0] not in (r["img0"], r["img1"]) for r in view.records)
    assert view.hard_negatives(ids[0]) == []
    assert view.image(ids[1])["img_id"] == ids[1]


# ---- readers on files as GQA / NLVR2 ship them ------------------------------------------------------------------


def test_readers_accept_real_files_and_locate_mistakes(tmp_path: Path) -> None:
    gqa = [{"img_id": "n161313", "label": {"yes": 1.0}, "question_id": "201307251", "sent": "Is it overcast?"},
           {"img_id": "n235859", "question_id": "07333408", "sent": "Who is wearing the dress?"}]  # submit: no label
    (tmp_path / "gqa.json").write_text(json.dumps(gqa))
    records = ann.read_gqa(tmp_path / "gqa.json")
    assert [r["question_id"] for r in records] == ["201307251", "07333408"] and records[1]["label"] == {}
    nlvr2 = [{"identifier": "dev-850-0-0", "img0": "dev-850-0-img0", "img1": "dev-850-0-img1", "label": 1,
              "sent": "An image shows one leather pencil case.", "uid": "nlvr2_dev_0"},
             {"identifier": "test1-0-1-0", "img0": "test1-0-1-img0", "img1": "test1-0-1-img1", "label": "False",
              "sent": "The left image contains twice the number of dogs."}]
    (tmp_path / "nlvr2.json").write_text(json.dumps(nlvr2))
    records = ann.read_nlvr2(tmp_path / "nlvr2.json")
    assert [r["label"] for r in records] == [1, 0] and records[1]["uid"] == "test1-0-1-0"
    ann.write_nlvr2(tmp_path / "again.json", records)
    assert ann.read_nlvr2(tmp_path / "again.json") == records
    (tmp_path / "bad.json").write_text(json.dumps([{**nlvr2[0], "label": 2}]))
    with pytest.raises(MMCoreError, match=r"bad\.json: statement 0 \(identifier 'dev-850-0-0'\): 'label'"):
        ann.read_nlvr2(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps([{"img_id": "x", "sent": "?"}]))
    with pytest.raises(MMCoreError, match="question 0 lacks 'question_id'"):
        ann.read_gqa(tmp_path / "bad.json")


# ---- the generated language is true of the scenes ----------------------------------------------------------------

_DIRECTION = r"(to the left of|to the right of|above|below)"
_SINGULAR = {plural(c.name): c.name for c in SALIENT}
_NUMBER = {w: k for k, w in enumerate(("no", "one", "two", "three", "four", "five", "six"))}


def _scenes(count: int) -> list[Scene]:
    return [sample_scene(random.Random(k), f"s{k}", 12) for k in range(count)]


def _thing(desc: str) -> tuple[str, str | None]:
    if " in " in desc:  # a person: "man in red"
        name, colour = desc.split(" in ")
        return name, colour
    words = desc.split()
    return (words[1], words[0]) if len(words) == 2 else (words[0], None)


def _has(scene: Scene, name: str, colour: str | None) -> bool:
    return any(scene.regions[i].name == name and (colour is None or COLOURS[scene.regions[i].colour] == colour)
               for i in scene.salient)


def _count(scene: Scene, name: str) -> int:
    return sum(scene.regions[i].name == name for i in scene.salient)


def solve_gqa(scene: Scene, sent: str) -> str:
    """An independent reading of each GQA question form."""
    regs, sal = scene.regions, scene.salient
    ref = {text: i for i, text in references(scene).items()}

    def yes(value: bool) -> str:
        return "yes" if value else "no"

    if m := re.fullmatch(rf"is the (.+) {_DIRECTION} the (.+)\?", sent):
        return yes(relation(regs[ref[m[1]]].box, regs[ref[m[3]]].box) == m[2])
    if m := re.fullmatch(r"are the (.+) and the (.+) (the same color|made of the same material)\?", sent):
        a, b = regs[ref[m[1]]], regs[ref[m[2]]]
        return yes(a.colour == b.colour if m[3] == "the same color" else a.material == b.material)
    if m := re.fullmatch(r"is the (\w+) made of (\w+) or (\w+)\?", sent):
        return MATERIALS[regs[ref[m[1]]].material]
    if m := re.fullmatch(r"is the (\w+) (\w+) or (\w+)\?", sent):
        return COLOURS[regs[ref[m[1]]].colour]
    if m := re.fullmatch(rf"what is {_DIRECTION} the (.+)\?", sent):
        x = ref[m[2]]
        (name,) = {regs[i].name for i in sal if i != x and relation(regs[i].box, regs[x].box) == m[1]}
        return name
    if m := re.fullmatch(rf"what (color is|is) the (\w+) {_DIRECTION} the (.+?)( made of)?\?", sent):
        x = ref[m[4]]
        (y,) = [i for i in sal if regs[i].name == m[2] and i != x and relation(regs[i].box, regs[x].box) == m[3]]
        return COLOURS[regs[y].colour] if m[1] == "color is" else MATERIALS[regs[y].material]
    if m := re.fullmatch(r"is there an? (.+) or an? (.+)\?", sent):
        return yes(_has(scene, *_thing(m[1])) or _has(scene, *_thing(m[2])))
    if m := re.fullmatch(r"are there both an? (.+) and an? (.+)\?", sent):
        return yes(_has(scene, *_thing(m[1])) and _has(scene, *_thing(m[2])))
    raise AssertionError(f"unknown question form: {sent!r}")


def solve_nlvr2(left: Scene, right: Scene, sent: str) -> bool:
    """An independent reading of each NLVR2 statement form."""
    side = {"left": left, "right": right}
    if m := re.fullmatch(r"both images contain an? (.+)", sent):
        return _has(left, *_thing(m[1])) and _has(right, *_thing(m[1]))
    if m := re.fullmatch(r"exactly one image contains an? (.+)", sent):
        return _has(left, *_thing(m[1])) != _has(right, *_thing(m[1]))
    if m := re.fullmatch(r"the (left|right) image has more (\w+) than the (left|right) image", sent):
        return _count(side[m[1]], _SINGULAR[m[2]]) > _count(side[m[3]], _SINGULAR[m[2]])
    if m := re.fullmatch(r"the (left|right) image shows exactly (\w+) (\w+)", sent):
        return _count(side[m[1]], _SINGULAR.get(m[3], m[3])) == _NUMBER[m[2]]
    if m := re.fullmatch(r"there are (\w+) (\w+) in total", sent):
        return _count(left, _SINGULAR[m[2]]) + _count(right, _SINGULAR[m[2]]) == _NUMBER[m[1]]
    if m := re.fullmatch(rf"in the (left|right) image an? (\w+) is {_DIRECTION} an? (\w+)", sent):
        s = side[m[1]]
        return any(relation(s.regions[i].box, s.regions[j].box) == m[3] for i in s.salient for j in s.salient
                   if i != j and s.regions[i].name == m[2] and s.regions[j].name == m[4])
    raise AssertionError(f"unknown statement form: {sent!r}")


def test_references_pick_out_one_object() -> None:
    for scene in _scenes(30):
        refs = references(scene)
        assert len(set(refs.values())) == len(refs)
        for i, text in refs.items():
            name, colour = _thing(text.split(" ", 1)[1] if text.split()[0] in ("small", "large") else text)
            assert scene.regions[i].name == name
            assert colour is None or COLOURS[scene.regions[i].colour] == colour


def test_gqa_answers_are_true_of_the_scene() -> None:
    kinds: set[str] = set()
    answers = []
    for scene in _scenes(60):
        for record in gqa_questions(scene, random.Random(scene.img_id), 6, 0):
            (answer,) = record["label"]
            assert solve_gqa(scene, record["sent"]) == answer, record["sent"]
            kinds.add(" ".join(record["sent"].split()[:2]))
            answers.append(answer)
    assert {"is the", "are the", "what is", "what color", "is there", "are there"} <= kinds
    yes_no = [a for a in answers if a in ("yes", "no")]
    assert 0.35 < yes_no.count("yes") / len(yes_no) < 0.65  # balanced within each yes/no form


def test_nlvr2_statements_are_true_of_the_pair() -> None:
    scenes = _scenes(80)
    labels = []
    for k in range(0, 80, 2):
        for t in range(3):
            sent, true = nlvr2_statement(scenes[k], scenes[k + 1], random.Random(f"{k}:{t}"))
            assert solve_nlvr2(scenes[k], scenes[k + 1], sent) == true, sent
            labels.append(true)
    assert 0.35 < sum(labels) / len(labels) < 0.65


# ---- the heads --------------------------------------------------------------------------------------------------


def test_nlvr2_head_encodes_both_images_in_one_call_and_trains(world: SynthWorld) -> None:
    backbone = tiny_backbone(world).eval()  # no dropout: the stacked call must equal two separate ones
    head = NLVR2Head(world.info(), backbone.hidden_size, {}).eval()
    layers = list(head.logit_fc)
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.LayerNorm, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[3].out_features) == (32, 32, 2)
    view = world.view("nlvr2", "train")
    batch = Collator(world.tokenizer())([view[i] for i in range(6)])
    calls: list[int] = []
    backbone.register_forward_hook(lambda module, args, kwargs_or_out: calls.append(1))
    logits = head.logits(backbone, batch)
    assert len(calls) == 1 and stack_images(batch)["visual_feats"].shape[0] == 12
    with torch.no_grad():
        pooled = torch.cat([backbone.encode(batch).pooled, backbone.encode(batch, "_1").pooled], dim=-1)
        expected = head.logit_fc(pooled)
    assert torch.allclose(logits, expected, atol=1e-5)
    loss = head.loss(backbone, batch)
    assert loss.item() == pytest.approx(F.cross_entropy(expected, batch["nlvr2_label"]).item(), rel=1e-5)
    loss.backward()
    assert head.logit_fc[0].weight.grad is not None and head.logit_fc[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad and p.dim() > 1)


def test_nlvr2_loss_ignores_unlabelled_statements(world: SynthWorld) -> None:
    backbone = tiny_backbone(world).eval()
    head = NLVR2Head(world.info(), backbone.hidden_size, {}).eval()
    view = world.view("nlvr2", "val")
    examples = [view[i] for i in range(4)]
    examples[1]["nlvr2_label"] = examples[3]["nlvr2_label"] = -1
    batch = Collator(world.tokenizer())(examples)
    logits = head.logits(backbone, batch)
    labelled = F.cross_entropy(logits[[0, 2]], batch["nlvr2_label"][[0, 2]])
    assert head.loss(backbone, batch).item() == pytest.approx(labelled.item(), rel=1e-5)


def test_nlvr2_evaluate_and_prediction_csv(world: SynthWorld, tmp_path: Path) -> None:
    backbone = tiny_backbone(world).eval()
    head = NLVR2Head(world.info(), backbone.hidden_size, {}).eval()
    view = world.view("nlvr2", "test")
    collator = Collator(world.tokenizer())
    assert head.write_predictions(tmp_path) is None  # nothing evaluated yet
    with torch.no_grad():
        metrics = head.evaluate(backbone, view, Ctx(collator, batch_size=5))
        whole = collator([view[i] for i in range(len(view))])
        logits = head.logits(backbone, whole)
    assert metrics == {"accuracy": pytest.approx(classification_accuracy(logits, whole["nlvr2_label"]))}
    path = head.write_predictions(tmp_path)
    assert path == tmp_path / "predictions.csv"
    predicted = logits.argmax(-1).tolist()
    expected = "".join(f"{i},{'True' if p == 1 else 'False'}\n" for i, p in zip(whole["identifier"], predicted))
    assert path.read_text() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


def test_gqa_head_is_the_vqa_classifier_with_exact_match(world: SynthWorld, tmp_path: Path) -> None:
    info = world.info()
    backbone = tiny_backbone(world).eval()
    head = GQAHead(info, backbone.hidden_size, {}).eval()
    assert head.num_answers == len(info.answers["gqa"]) and head.logit_fc[3].out_features == head.num_answers
    assert GQAHead.requires == {"text", "visual_feats", "visual_pos", "gqa_target"}
    view = world.view("gqa", "test")
    collator = Collator(world.tokenizer())
    batch = collator([view[i] for i in range(6)])
    logits = head.logits(backbone, batch)
    bce = F.binary_cross_entropy_with_logits(logits, batch["gqa_target"]) * head.num_answers
    assert head.loss(backbone, batch).item() == pytest.approx(bce.item(), rel=1e-5)
    with torch.no_grad():
        metrics = head.evaluate(backbone, view, Ctx(collator, batch_size=7))
        whole = collator([view[i] for i in range(len(view))])
        logits = head.logits(backbone, whole)
    assert metrics == {"accuracy": pytest.approx(exact_match_accuracy(logits, whole["gqa_target"]))}
    path = head.write_predictions(tmp_path)
    assert path == tmp_path / "predictions.json"
    expected = [{"questionId": q, "prediction": head.answers[a]}
                for q, a in zip(whole["question_id"], logits.argmax(-1).tolist())]
    assert json.loads(path.read_text()) == expected
    with pytest.raises(MMCoreError, match="head 'gqa': the dataset has no answer table 'gqa'"):
        GQAHead(dataclasses.replace(info, answers={"vqa": ("yes",)}), 16, {})


def test_vqa_head_writes_vqa_results_json(world: SynthWorld, tmp_path: Path) -> None:
    backbone = tiny_backbone(world).eval()
    head = VQAHead(world.info(), backbone.hidden_size, {}).eval()
    view = world.view("vqa", "test")
    collator = Collator(world.tokenizer())
    with torch.no_grad():
        head.evaluate(backbone, view, Ctx(collator, batch_size=8))
        whole = collator([view[i] for i in range(len(view))])
        answers = [head.answers[a] for a in head.logits(backbone, whole).argmax(-1).tolist()]
    path = head.write_predictions(tmp_path)
    assert path == tmp_path / "predictions.json"
    written = json.loads(path.read_text())
    assert written == [{"question_id": q, "answer": a} for q, a in zip(whole["question_id"].tolist(), answers)]
    assert all(isinstance(r["question_id"], int) for r in written)


def test_prediction_writers_exact_formats(tmp_path: Path) -> None:
    write_vqa_predictions(tmp_path / "vqa.json", [(12, "yes"), (7, "two")])
    assert (tmp_path / "vqa.json").read_text() == '[{"question_id": 12, "answer": "yes"}, {"question_id": 7, "answer": "two"}]'
    write_gqa_predictions(tmp_path / "gqa.json", [("0012", "red"), (5, "no")])
    assert (tmp_path / "gqa.json").read_text() == ('[{"questionId": "0012", "prediction": "red"}, '
                                                   '{"questionId": "5", "prediction": "no"}]')
    out = tmp_path / "nlvr2.csv"
    out.write_text("old\n")
    write_nlvr2_predictions(out, [("dev-1-0-0", True), ("dev-1-0-1", False)])
    assert out.read_text() == "dev-1-0-0,True\ndev-1-0-1,False\n"
    with pytest.raises(ValueError, match="identifiers"):
        write_nlvr2_predictions(out, [("a,b", True)])
    assert out.read_text() == "dev-1-0-0,True\ndev-1-0-1,False\n"  # a failed write leaves the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gqa.json", "nlvr2.csv", "vqa.json"]


# ---- end to end ----------------------------------------------------------------------------------------------------

TINY = f"""\
name: tiny_downstream
seed: 1
log_every: 1
eval_batch_size: 16
backbone: {{name: lxmert_s, hidden_size: 16, num_attention_heads: 2, intermediate_size: 32, x_layers: 1}}
datasets:
  synthworld: {json.dumps(SMALL)}
stages: []
finetune:
  - {{name: vqa, head: vqa, data: {{view: vqa}}, max_steps: 1, batch_size: 4}}
  - {{name: gqa, head: gqa, data: {{view: gqa}}, max_steps: 2, batch_size: 4}}
  - {{name: nlvr2, head: nlvr2, data: {{view: nlvr2}}, max_steps: 2, batch_size: 4}}
"""


def test_tiny_recipe_fine_tunes_gqa_and_nlvr2(tmp_path: Path, world: SynthWorld) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    result = CliRunner().invoke(main, ["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "a",
                                       "--cache-dir", str(world.cache_dir), "--quiet"], terminal_width=200)
    assert result.exit_code == 0, (result.output, result.exception)
    run = tmp_path / "runs" / "tiny_downstream" / "a"
    results = json.loads((run / "results.json").read_text())
    for name in ("vqa", "gqa", "nlvr2"):
        assert results[name]["steps"] >= 1 and 0.0 <= results[name]["metrics"]["accuracy"] <= 1.0
    assert results["gqa"]["predictions"] == "finetune/gqa/predictions.json"
    assert results["nlvr2"]["predictions"] == "finetune/nlvr2/predictions.csv"
    # The prediction files agree with the reported accuracies (test split).
    gold = {r["question_id"]: next(iter(r["label"])) for r in ann.read_gqa(world.directory / "gqa_test.json")}
    gqa = json.loads((run / "finetune/gqa/predictions.json").read_text())
    assert [r["questionId"] for r in gqa] == list(gold)
    hits = [r["prediction"] == gold[r["questionId"]] for r in gqa]
    assert results["gqa"]["metrics"]["accuracy"] == pytest.approx(sum(hits) / len(hits))
    labels = {r["identifier"]: bool(r["label"]) for r in ann.read_nlvr2(world.directory / "nlvr2_test.json")}
    lines = (run / "finetune/nlvr2/predictions.csv").read_text().splitlines()
    assert len(lines) == len(labels) and all(re.fullmatch(r"test-\d+-0,(True|False)", line) for line in lines)
    hits = [labels[i] == (p == "True") for i, p in (line.split(",") for line in lines)]
    assert results["nlvr2"]["metrics"]["accuracy"] == pytest.approx(sum(hits) / len(hits))
    vqa = json.loads((run / "finetune/vqa/predictions.json").read_text())
    assert vqa and all(set(r) == {"question_id", "answer"} and isinstance(r["question_id"], int) for r in vqa)


def test_downstream_all_recipe_validates() -> None:
    result = CliRunner().invoke(main, ["validate", str(ROOT / "recipes" / "downstream_all.yaml")])
    assert result.exit_code == 0, result.output
    assert "4 fine-tuning" in result.output
    bad = CliRunner().invoke(main, ["validate", str(ROOT / "recipes" / "downstream_all.yaml"),
                                    "--set", "finetune=[{head: nlvr2, data: {view: vqa}}]"])
    assert bad.exit_code == 2 and "nlvr2_label, visual_feats_1, visual_pos_1" in bad.output
