"""The ``pairs`` dataset on a drawn image set: mmcore data prepare -> check -> new recipe -> a tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import invoke
from shapes import write_source

pytest.importorskip("PIL")

COUNTS = {"train": 120, "val": 40, "test": 40}  # 200 images, 800 questions
GRID = ["--extractor", "grid", "--option", "feature_dim=32", "--option", "grid_size=3", "--quiet"]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source folder, prepared dataset directory) of 200 drawn images."""
    base = tmp_path_factory.mktemp("pairs")
    source = write_source(base / "source", COUNTS, seed=0)
    invoke(["data", "prepare", str(source), str(base / "ready"), *GRID])
    return source, base / "ready"


def test_prepare_writes_a_complete_dataset_directory(drawn: tuple[Path, Path]) -> None:
    _, ready = drawn
    manifest = json.loads((ready / "dataset.json").read_text())
    assert manifest["images"] == 200 and manifest["feature_dim"] == 32 and manifest["max_regions"] == 9
    assert manifest["counts"]["vqa"] == {"train": 480, "val": 160, "test": 160}
    # Every split numbers its images from 0: the ids keep the split folder, so nothing collides.
    ids = json.loads((ready / "annotations.json").read_text())["vqa"]["test"][0]["images"]
    assert ids == ["test/0"]
    answers = json.loads((ready / "answers_vqa.json").read_text())
    assert {"yes", "no", "red", "circle", "triangle"} <= set(answers) and len(answers) == 13
    vocab = (ready / "vocab.txt").read_text().split()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and "triangle" in vocab
    assert (ready / "hard_negatives.npz").is_file() and not list(ready.parent.glob("*.partial"))
    assert manifest["feature_normalisation"] == "standardise" and (ready / "feature_stats.npz").is_file()


def test_features_are_centred_on_the_training_regions(drawn: tuple[Path, Path], tmp_path: Path) -> None:
    import h5py
    import numpy as np

    source, ready = drawn
    invoke(["data", "prepare", str(source), str(tmp_path / "raw"), *GRID, "--normalise", "none"])
    stats = np.load(ready / "feature_stats.npz")
    with h5py.File(tmp_path / "raw/features.h5") as raw, h5py.File(ready / "features.h5") as done:
        assert list(raw["image_ids"]) == list(done["image_ids"])
        x, y = raw["features"][:].astype(np.float64), done["features"][:].astype(np.float64)
        real = np.arange(x.shape[1])[None, :] < raw["num_boxes"][:][:, None]
        train = np.array([i.startswith(b"train/") for i in raw["image_ids"]])
    # The raw grid features share a large common vector; the prepared ones are centred over the training
    # regions and scaled to unit variance on average, padding untouched.
    assert np.linalg.norm(x[real & train[:, None]].mean(0)) > 1.0
    assert np.abs(y[real & train[:, None]].mean(0)).max() < 0.01 and abs(y[real].var(0).mean() - 1) < 0.1
    np.testing.assert_allclose(y[real], (x[real] - stats["mean"]) / stats["std"], atol=0.02)


def test_check_reports_counts_coverage_and_the_question_only_baseline(drawn: tuple[Path, Path]) -> None:
    source, ready = drawn
    report = json.loads(invoke(["data", "check", str(ready), "--json"]))
    assert report["counts"]["captions"] == {"train": 240, "val": 80, "test": 80}
    assert report["unknown_images"] == [] and report["coverage"]["vqa"]["test"] == 1.0
    base = report["question_only"]["vqa"]["test"]
    # Colour questions cannot be answered without the image: the prior is near chance (1/8); two thirds of the
    # yes/no questions are answered no.
    assert base["colour"] < 0.3 and 0.5 < base["yes/no"] < 0.85 and 0.3 < base["all"] < 0.6
    assert report["chance"]["vqa"] == {"colour": 0.125, "shape": 1 / 3, "yes/no": 0.5}
    # The source folder gives the same report before anything is extracted.
    assert json.loads(invoke(["data", "check", str(source), "--json"]))["question_only"] == report["question_only"]


def test_an_image_id_collision_is_rejected_naming_both_files(drawn: tuple[Path, Path], tmp_path: Path) -> None:
    source, _ = drawn
    copy = Path(shutil.copytree(source, tmp_path / "source"))
    shutil.copyfile(copy / "images/train/3.png", copy / "images/train/3.jpg")
    out = invoke(["data", "check", str(copy)], code=2)
    assert "images/train/3.jpg" in out and "images/train/3.png" in out and "Traceback" not in out
    out = invoke(["data", "prepare", str(copy), str(tmp_path / "ready"), *GRID], code=2)
    assert "images/train/3.jpg" in out and not (tmp_path / "ready").exists()


def test_a_question_id_given_twice_is_rejected_naming_both_places(tmp_path: Path) -> None:
    source = write_source(tmp_path / "s", {"train": 4, "val": 2}, seed=1)
    (source / "gqa_train.jsonl").write_text('{"image": "train/0", "question": "q?", "answer": "a", "id": 7}\n')
    (source / "gqa.jsonl").write_text("")
    out = invoke(["data", "check", str(source)], code=2)
    assert "gqa.jsonl and gqa_<split>.jsonl" in out
    (source / "gqa.jsonl").unlink()
    (source / "gqa_val.jsonl").write_text('{"image": "val/0", "question": "q?", "answer": "a", "id": 7}\n')
    (source / "gqa_train.jsonl").write_text('{"image": "train/0", "question": "q?", "answer": "a", "id": 7}\n'
                                            '{"image": "train/1.png", "question": "r?", "answer": "b", "id": "7"}\n')
    out = invoke(["data", "check", str(source)], code=2)
    assert "gqa_train.jsonl:1 and" in out and "gqa_train.jsonl:2" in out


def test_bad_records_name_file_line_and_key(tmp_path: Path) -> None:
    source = write_source(tmp_path / "s", {"train": 3}, seed=2)
    with open(source / "vqa.jsonl", "a") as f:
        f.write('{"image": "train/0", "question": "how many?", "answer": ["two"], "split": "train"}\n')
    out = invoke(["data", "check", str(source)], code=2)
    assert "vqa.jsonl:13: unknown key(s) answer" in out
    lines = (source / "vqa.jsonl").read_text().splitlines()
    (source / "vqa.jsonl").write_text("\n".join([*lines[:-1], lines[0].replace("train/0", "train/99")]) + "\n")
    out = invoke(["data", "check", str(source)], code=2)
    assert "1 annotation(s) name an unknown image" in out and "vqa.jsonl:13: 'train/99'" in out


def test_prepare_resumes_an_interrupted_extraction(tmp_path: Path) -> None:
    from mmcore.data.prepare import PrepareOptions, prepare
    from mmcore.progress import Reporter
    from mmcore_extractors.grid import GridExtractor

    source = write_source(tmp_path / "s", {"train": 40, "val": 8}, seed=3)
    calls: list[int] = []

    class Interrupted(GridExtractor):
        fail_at = 3

        def extract(self, images):  # type: ignore[no-untyped-def]
            calls.append(len(images))
            if len(calls) == self.fail_at:
                raise KeyboardInterrupt
            return super().extract(images)

    extractor = Interrupted({"feature_dim": 16, "grid_size": 2})
    options = PrepareOptions(extractor=extractor, shard_size=10)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, tmp_path / "ready", options, Reporter(quiet=True))
    assert not (tmp_path / "ready").exists() and len(list((tmp_path / "ready.partial/shards").glob("*.npz"))) == 2
    Interrupted.fail_at = 0
    calls.clear()
    prepare(source, tmp_path / "ready", options, Reporter(quiet=True))
    assert calls == [10, 10, 8]  # the two finished shards were kept
    assert json.loads((tmp_path / "ready/dataset.json").read_text())["images"] == 48


def test_new_recipe_pretrains_and_finetunes_on_the_dataset(drawn: tuple[Path, Path], tmp_path: Path) -> None:
    _, ready = drawn
    recipe = tmp_path / "mine.yaml"
    invoke(["new", "recipe", "--dataset", str(ready), "--output", str(recipe)])
    data = yaml.safe_load(recipe.read_text())
    assert [s["name"] for s in data["stages"]] == ["phrase", "sentence"]  # no detector labels: no token stage
    assert [f["name"] for f in data["finetune"]] == ["vqa", "retrieval"]
    assert data["datasets"] == {"pairs": {"root": str(ready.resolve())}}
    # check reads a recipe's datasets through their plugin: the same baseline as from the directory.
    by_recipe = json.loads(invoke(["data", "check", str(recipe), "--json"]))["pairs"]["vqa"]
    by_directory = json.loads(invoke(["data", "check", str(ready), "--json"]))["question_only"]["vqa"]
    assert by_recipe["test"]["question_only"] == pytest.approx(by_directory["test"]["all"])
    assert by_recipe["train"]["records"] == 480 and "question_only" not in by_recipe["train"]
    tiny = ["--set", "backbone.hidden_size=32", "--set", "backbone.num_attention_heads=2",
            "--set", "backbone.intermediate_size=64", "--set", "backbone.x_layers=1",
            *(x for s in ("stages.phrase", "stages.sentence", "finetune.vqa", "finetune.retrieval")
              for x in ("--set", f"{s}.epochs=1"))]
    out = invoke(["run", str(recipe), *tiny, "--output-dir", str(tmp_path), "--run-name", "a", "--cache-dir",
                  str(tmp_path / "cache")])
    results = json.loads((tmp_path / "mine/a/results.json").read_text())
    assert set(results["_stages"]) == {"phrase", "sentence"}
    vqa = results["vqa"]["metrics"]
    # The results carry the question-only baseline and the accuracy per question type beside the accuracy.
    assert vqa["question_only"] == pytest.approx(by_directory["test"]["all"])
    assert {"accuracy", "accuracy_colour", "accuracy_shape", "accuracy_yes/no"} <= set(vqa)
    # A fine-tuning that ends at the baseline says so (one epoch of a tiny model may or may not get past it).
    at_baseline = vqa["accuracy"] < vqa["question_only"] + 0.02
    assert ("the model answers from the question, not the image" in out) == at_baseline
    assert "ir_r1" in results["retrieval"]["metrics"]


def test_a_source_folder_is_prepared_on_first_use_and_cached(drawn: tuple[Path, Path], tmp_path: Path) -> None:
    from mmcore_pairs.dataset import Pairs

    source, _ = drawn
    options = {"root": str(source), "extractor_options": {"feature_dim": 16, "grid_size": 2}}
    first = Pairs(options, tmp_path)
    first.prepare()
    assert first.directory.parent == tmp_path / "pairs" and first.info().answers["vqa"][:2] in (("yes", "no"),
                                                                                              ("no", "yes"))
    stamp = (first.directory / "features.h5").stat().st_mtime_ns
    again = Pairs(options, tmp_path)
    again.prepare()
    assert again.directory == first.directory and (again.directory / "features.h5").stat().st_mtime_ns == stamp
    view = again.view("vqa", "val")
    assert len(view) == 160 and view[0]["visual_feats"].shape == (4, 16)
    with pytest.raises(Exception, match="detector labels"):
        again.view("token", "train")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_every_kind_gives_its_view_over_a_given_store_and_tokenizer(drawn: tuple[Path, Path], tmp_path: Path) -> None:
    from mmcore.data.tokenizer import load_tokenizer
    from mmcore_pairs.dataset import Pairs

    _, ready = drawn
    source = tmp_path / "source"
    source.mkdir()
    for split, n in (("train", 6), ("val", 2)):
        images = [f"{split}/{i}.png" for i in range(n)]
        _write_jsonl(source / f"gqa_{split}.jsonl", [{"image": im, "question": "what colour is it?",
                                                      "answer": "Red ", "id": f"{split}{i}"}
                                                     for i, im in enumerate(images)])
        _write_jsonl(source / f"nlvr2_{split}.jsonl", [{"images": [images[i], images[i - 1]], "text": "two shapes",
                                                        "label": i % 2 == 0} for i in range(n)])
        _write_jsonl(source / f"retrieval_{split}.jsonl", [{"image": im, "texts": ["a shape", f"picture {i}"]}
                                                           for i, im in enumerate(images)])
    tokenizer = tmp_path / "tokenizer"
    load_tokenizer(ready).save_pretrained(str(tokenizer))
    invoke(["data", "prepare", str(source), str(tmp_path / "ready"), "--features", str(ready / "features.h5"),
            "--tokenizer", str(tokenizer), "--quiet"])
    data = Pairs({"root": str(tmp_path / "ready")}, tmp_path / "cache")
    assert data.info().answers == {"gqa": ("red",)} and data.info().vocab_size == len(load_tokenizer(ready))
    gqa = data.view("gqa", "val")
    assert len(gqa) == 2 and gqa[1]["question_id"] == "val1" and gqa[1]["gqa_target"].tolist() == [1.0]
    nlvr2 = data.view("nlvr2", "train")[1]
    assert (nlvr2["img_id"], nlvr2["img_id_1"], nlvr2["nlvr2_label"]) == ("train/1", "train/0", 0)
    retrieval = data.view("retrieval", "train")
    assert len(retrieval) == 12 and retrieval.captions_of("train/2") == ["a shape", "picture 2"]
    with pytest.raises(Exception, match="vqa.jsonl with split 'train'"):
        data.view("vqa", "train")
