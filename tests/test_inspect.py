"""``init: <stage>`` on fine-tunings and zero-shot entries, the heads' per-example methods, and ``mmcore inspect``
over a tiny two-stage run (seconds), checked against the heads recomputed directly from the checkpoints."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import invoke, run_recipe
from mmcore_heads.nlvr2 import NLVR2Head
from mmcore_heads.retrieval import RetrievalHead
from mmcore_heads.vqa import VQAHead

from mmcore.api import DataInfo, Head
from mmcore.data.collate import Collator
from mmcore.plugins import load_plugins
from mmcore.recipe import parse_yaml

WORLD = {"train_images": 40, "val_images": 8, "test_images": 8, "vqa_train_images": 16, "retrieval_train_images": 8,
         "max_regions": 6, "feature_dim": 16, "hard_negatives_top": 10}
RECIPE = f"""\
name: tiny
seed: 3
log_every: 1
precision: fp32  # the checks below recompute the heads' outputs in fp32
eval_batch_size: 16
backbone: {{name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}}
datasets:
  synthworld: {json.dumps(WORLD)}
stages:
  - {{name: token, data: {{view: token}}, tasks: {{mlm: {{}}, itm: {{}}}}, max_steps: 3, batch_size: 8}}
  - {{name: sentence, data: {{view: sentence}}, tasks: {{mlm: {{}}, itm_hs: {{}}}}, max_steps: 3, batch_size: 8}}
zero_shot:
  - {{name: zs_token, head: retrieval, init: token, data: {{view: retrieval, split: test}}}}
finetune:
  - {{name: vqa_after_token, head: vqa, init: token, data: {{view: vqa}}, max_steps: 2, batch_size: 8}}
  - {{name: vqa, head: vqa, data: {{view: vqa}}, max_steps: 2, batch_size: 8}}
  - {{name: retrieval, head: retrieval, data: {{view: retrieval}}, max_steps: 2, batch_size: 4}}
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return run_recipe(tmp_path_factory.mktemp("runs"), RECIPE, cache_dir)


class Direct:
    """The run's data and models built straight from the registry and the checkpoints (not through inspect)."""

    def __init__(self, run: Path, cache_dir: Path) -> None:
        self.run = run
        self.recipe = parse_yaml((run / "recipe.resolved.yaml").read_text())
        self.registry = load_plugins().registry
        self.dataset = self.registry.get("dataset", "synthworld").factory(self.recipe["datasets"]["synthworld"], cache_dir)
        self.dataset.prepare()
        self.info = self.dataset.info()
        self.collate = Collator(self.dataset.tokenizer(), 20)

    def backbone(self, weights: dict[str, torch.Tensor]) -> Any:
        spec = dict(self.recipe["backbone"])
        backbone = self.registry.get("backbone", spec.pop("name")).factory(spec, self.info)
        backbone.load_state_dict(weights)
        return backbone.eval()

    def finetuned(self, name: str, head: str) -> tuple[Any, Head]:
        folder = self.run / "finetune" / name
        ckpt = torch.load(folder / "best.pt" if (folder / "best.pt").is_file() else folder / "checkpoint.pt")
        backbone = self.backbone(ckpt["backbone"])
        model = self.registry.get("head", head).factory(self.info, backbone.hidden_size, {})
        model.load_state_dict(ckpt["head"])
        return backbone, model.eval()

    def stage(self, name: str) -> dict[str, Any]:
        return torch.load(self.run / "stages" / name / "checkpoint.pt", weights_only=False)


@pytest.fixture(scope="module")
def direct(run: Path, cache_dir: Path) -> Direct:
    return Direct(run, cache_dir)


def inspect(run: Path, cache_dir: Path, *args: str, code: int = 0) -> str:
    return invoke(["inspect", str(run), "--cache-dir", str(cache_dir), *args], code)


# ---- init: <stage> ---------------------------------------------------------------------------------------------


def test_finetunings_and_zero_shot_start_from_the_named_stage(run: Path, direct: Direct) -> None:
    results = json.loads((run / "results.json").read_text())
    assert results["vqa_after_token"]["init"] == "token" and "init" not in results["vqa"]
    assert results["zs_token"]["init"] == "token" and "metrics" in results["zs_token"]
    token, sentence = direct.stage("token"), direct.stage("sentence")
    assert token["fingerprint"] != sentence["fingerprint"]
    after_token = torch.load(run / "finetune" / "vqa_after_token" / "checkpoint.pt")
    default = torch.load(run / "finetune" / "vqa" / "checkpoint.pt")
    assert after_token["init"] == {"from": "token", "fingerprint": token["fingerprint"]}
    assert default["init"] == {"from": "sentence", "fingerprint": sentence["fingerprint"]}
    # The resolved recipe keeps `init` only where the recipe gave it.
    resolved = parse_yaml((run / "recipe.resolved.yaml").read_text())
    assert [f.get("init") for f in resolved["finetune"]] == ["token", None, None]


def test_an_unknown_init_stage_is_located(tmp_path: Path) -> None:
    text = textwrap.dedent(RECIPE).replace("init: token, data: {view: vqa}", "init: tokn, data: {view: vqa}")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "init: tokn" in row)
    output = invoke(["validate", str(recipe)], code=2)
    flat = " ".join(output.split())
    assert f"{recipe}:{line}: finetune[0].init" in flat
    assert "'tokn'" in flat and "did you mean 'token'" in flat and "stages: token, sentence" in flat


def test_init_in_a_recipe_without_stages_is_an_error(tmp_path: Path) -> None:
    text = textwrap.dedent(RECIPE).split("stages:")[0] + (
        "finetune:\n  - {name: vqa, head: vqa, init: token, data: {view: vqa}, max_steps: 1}\n")
    recipe = tmp_path / "vanilla.yaml"
    recipe.write_text(text)
    output = " ".join(invoke(["validate", str(recipe)], code=2).split())
    assert "finetune[0].init" in output and "the recipe has no pre-training stages" in output


# ---- the heads' per-example methods --------------------------------------------------------------------------


def _info() -> DataInfo:
    return DataInfo(vocab_size=10, feature_dim=4, max_regions=2, num_objects=1, num_attributes=1, pad_token_id=0,
                    cls_token_id=1, sep_token_id=2, mask_token_id=3, unk_token_id=4, special_token_ids=(0, 1, 2, 3, 4),
                    object_token_ids=((5,),), answers={"vqa": ("yes", "no", "two", "red", "cat")})


def test_answer_head_top_predictions_are_the_softmax_top_k() -> None:
    head = VQAHead(_info(), 8, {})
    # softmax(log p) = p: the probabilities are known exactly.
    head.logits = lambda backbone, batch: torch.tensor([[0.1, 0.3, 0.4, 0.05, 0.15]]).log()  # type: ignore[method-assign]
    top = head.top_predictions(None, {}, 3)[0]  # type: ignore[arg-type]
    assert [a for a, _ in top] == ["two", "no", "cat"]
    assert [p for _, p in top] == pytest.approx([0.4, 0.3, 0.15])
    gold = head.gold_labels({"vqa_target": torch.tensor([[0.0, 0.3, 0.0, 1.0, 0.0], [0.0] * 5])})
    assert gold[0] == pytest.approx({"no": 0.3, "red": 1.0}) and gold[1] == {}


def test_nlvr2_and_retrieval_per_example_methods() -> None:
    nlvr2 = NLVR2Head(_info(), 8, {})
    nlvr2.logits = lambda backbone, batch: torch.tensor([[0.0, math.log(3.0)]])  # type: ignore[method-assign]
    top = nlvr2.top_predictions(None, {}, 2)[0]  # type: ignore[arg-type]
    assert [a for a, _ in top] == ["true", "false"] and [p for _, p in top] == pytest.approx([0.75, 0.25])
    assert nlvr2.gold_labels({"nlvr2_label": torch.tensor([1, 0, -1])}) == [{"true": 1.0}, {"false": 1.0}, {}]
    retrieval = RetrievalHead(_info(), 8, {})
    scores = torch.tensor([0.5, -1.0])
    retrieval.scores = lambda backbone, batch: scores  # type: ignore[method-assign]
    assert torch.equal(retrieval.pair_scores(None, {}), scores)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        retrieval.top_predictions(None, {}, 3)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        nlvr2.pair_scores(None, {})  # type: ignore[arg-type]


# ---- mmcore inspect ------------------------------------------------------------------------------------------


def test_inspect_shows_each_stage_as_the_heads_compute_it(run: Path, cache_dir: Path, direct: Direct) -> None:
    view = direct.dataset.view("vqa", "test")
    qid = view.question_ids[3]
    output = inspect(run, cache_dir, "--example", str(qid))
    assert "token" in output and "sentence" in output
    report = json.loads((run / "inspect" / f"inspect_{qid}.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["token", "sentence"]
    assert report["question"] == view[3]["text"] and report["image_id"] == view[3]["img_id"]
    assert report["gold"] == pytest.approx({a: s for a, s in view.labels[3].items() if a in view.answers and s > 0})
    batch = direct.collate([view[3]])
    for row, name in zip(report["rows"], ["vqa_after_token", "vqa"]):
        answers = row["answers"]["answers"]
        assert row["answers"]["source"].startswith(name + " ") and len(answers) == 3
        probabilities = [a["probability"] for a in answers]
        assert all(0.0 <= p <= 1.0 for p in probabilities) and probabilities == sorted(probabilities, reverse=True)
        backbone, head = direct.finetuned(name, "vqa")
        with torch.no_grad():
            expected = torch.softmax(head.logits(backbone, batch), dim=-1)[0].topk(3)  # type: ignore[attr-defined]
        assert [a["answer"] for a in answers] == [head.answers[i] for i in expected.indices.tolist()]  # type: ignore[attr-defined]
        assert probabilities == pytest.approx(expected.values.tolist(), abs=1e-6)
    # The image's top-1 caption: zero-shot from the token stage's ITM, then the fine-tuned retrieval head.
    retrieval = direct.dataset.view("retrieval", "test")
    image = report["caption_image"]
    assert image == report["image_id"] and report["gold_captions"] == retrieval.captions_of(image)
    token, sentence = report["rows"][0]["caption"], report["rows"][1]["caption"]
    assert token["source"] == "zero-shot (itm)" and sentence["source"].startswith("retrieval ")
    state = direct.stage("token")
    backbone = direct.backbone(state["backbone"])
    itm = direct.registry.get("task", "itm").factory(direct.info, backbone)
    itm.load_state_dict(state["tasks"]["itm"])
    zero_shot = RetrievalHead(direct.info, backbone.hidden_size, {"itm": itm}).eval()
    for cell, (model_backbone, head) in [(token, (backbone, zero_shot)),
                                         (sentence, direct.finetuned("retrieval", "retrieval"))]:
        examples = [{"text": c, **retrieval.image(image)} for c in retrieval.captions]
        with torch.no_grad():
            scores = head.scores(model_backbone, direct.collate(examples))  # type: ignore[attr-defined]
        top = int(scores.argmax())
        assert cell["caption"] == retrieval.captions[top] and cell["score"] == pytest.approx(float(scores[top]), abs=1e-5)
        assert cell["gold"] == (retrieval.captions[top] in retrieval.captions_of(image))


def test_inspect_writes_markdown_and_a_valid_png(run: Path, cache_dir: Path, direct: Direct, tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    pytest.importorskip("matplotlib")
    qid = direct.dataset.view("vqa", "test").question_ids[0]
    retrieval = direct.dataset.view("retrieval", "test")
    other = retrieval.images[-1]
    inspect(run, cache_dir, "--example", str(qid), "--caption-image", other, "--out", str(tmp_path / "out"))
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"inspect_{qid}.{ext}" for ext in ("json", "md", "png")]  # no temporary file left behind
    with image_module.open(tmp_path / "out" / f"inspect_{qid}.png") as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100
    markdown = (tmp_path / "out" / f"inspect_{qid}.md").read_text()
    assert f"inspect_{qid}.png" in markdown and "| token | T |" in markdown and "| sentence | T → S |" in markdown
    assert json.loads((tmp_path / "out" / f"inspect_{qid}.json").read_text())["caption_image"] == other


def test_inspect_errors_are_clear(run: Path, cache_dir: Path, direct: Direct, tmp_path: Path) -> None:
    first = [str(q) for q in direct.dataset.view("vqa", "test").question_ids[:3]]
    output = " ".join(inspect(run, cache_dir, "--example", "no-such-id", code=2).split())
    assert "no question with id 'no-such-id'" in output and ", ".join(first) in output
    assert "predictions" in output and "(question_id)" in output and "Traceback" not in output
    output = " ".join(inspect(run, cache_dir, "--example", first[0], "--caption-image", "nope", code=2).split())
    assert "no image 'nope'" in output and direct.dataset.view("retrieval", "test").images[0] in output
    output = " ".join(invoke(["inspect", str(tmp_path), "--example", "1"], code=2).split())
    assert "is not a run directory" in output


def test_a_run_without_stages_shows_its_fine_tuned_heads(tmp_path: Path, cache_dir: Path) -> None:
    text = textwrap.dedent(RECIPE).split("stages:")[0] + textwrap.dedent("""\
        finetune:
          - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 1, batch_size: 8}
          - {name: retrieval, head: retrieval, data: {view: retrieval}, max_steps: 1, batch_size: 4}
        """)
    (tmp_path / "vanilla.yaml").write_text(text)
    invoke(["run", str(tmp_path / "vanilla.yaml"), "--output-dir", str(tmp_path), "--run-name", "v", "--cache-dir",
            str(cache_dir), "--quiet"])
    run = tmp_path / "tiny" / "v"
    qid = Direct(run, cache_dir).dataset.view("vqa", "test").question_ids[1]
    output = inspect(run, cache_dir, "--example", str(qid))
    assert "(no pre-training)" in output and "vanilla" in output
    report = json.loads((run / "inspect" / f"inspect_{qid}.json").read_text())
    [row] = report["rows"]
    assert row["answers"]["source"].startswith("vqa ") and len(row["answers"]["answers"]) == 3
    assert row["caption"]["source"].startswith("retrieval ") and row["caption"]["caption"]
