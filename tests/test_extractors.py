"""``mmcore data extract``: images → feature store through the extractor plugins; the paper recipes on LXMERT's files."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mmcore_extractors.grid import DESCRIPTOR_DIM, GridExtractor

from mmcore.cli import main
from mmcore.data.store import FeatureStore
from mmcore.data.tokenizer import build_wordpiece

ROOT = Path(__file__).resolve().parent.parent
HAS_PIL = importlib.util.find_spec("PIL") is not None
needs_reader = pytest.mark.skipif(not HAS_PIL and importlib.util.find_spec("torchvision") is None,
                                  reason="reading images needs Pillow or torchvision (pip install \"mmcore-vlp[images]\")")


def run_cli(args: list, code: int = 0) -> str:
    """The command's output with all whitespace removed (the console wraps long lines anywhere)."""
    result = CliRunner().invoke(main, [str(a) for a in args], terminal_width=200)
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    return "".join(result.output.split())


def flat(text: str) -> str:
    return "".join(text.split())


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG written by hand (no imaging library needed to make test images)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].astype(np.uint8).tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_images(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Three small images of different sizes: two PNGs written by hand, a JPEG when Pillow is there."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = {}
    for i, name in enumerate(names):
        pixels = (rng.random((12 + 4 * i, 16 + 2 * i, 3)) * 255).astype(np.uint8)
        images[name] = pixels
        if i == 2 and HAS_PIL:
            from PIL import Image

            Image.fromarray(pixels).save(folder / f"{name}.jpg", quality=95)
        else:
            (folder / f"{name}.png").write_bytes(png_bytes(pixels))
    return images


GRID_2x2 = np.array([[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]], dtype=np.float32)


@needs_reader
def test_grid_extract_through_the_cli_is_deterministic(tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["a", "b", "c"])
    args = ["data", "extract", tmp_path / "images", None, "--extractor", "grid", "--option", "grid_size=2",
            "--option", "feature_dim=16", "--batch-size", "2"]
    out = run_cli([*args[:3], tmp_path / "one.h5", *args[4:]])
    assert flat("wrote") in out and "3images,upto4regionsof16-dfeatures" in out and "images/s" in out
    run_cli([*args[:3], tmp_path / "two.h5", *args[4:], "--batch-size", "1", "--quiet"])  # batching changes nothing
    one, two = FeatureStore(tmp_path / "one.h5"), FeatureStore(tmp_path / "two.h5")
    assert one.ids() == ["a", "b", "c"] and (one.feature_dim, one.max_boxes) == (16, 4)
    for img_id in one.ids():
        x, y = one.image(img_id), two.image(img_id)
        assert x["visual_feats"].shape == (4, 16) and np.array_equal(x["visual_feats"], y["visual_feats"])
        assert np.array_equal(x["visual_pos"], GRID_2x2)  # row-major cells, normalised
        assert x["visual_mask"].tolist() == [1, 1, 1, 1]
        assert not x["obj_conf"].any() and not x["attr_conf"].any() and not x["obj_labels"].any()
    # Different images (and different cells) give different features.
    assert not np.array_equal(one.image("a")["visual_feats"], one.image("b")["visual_feats"])
    assert (tmp_path / "one.objects_vocab.txt").read_text() == "none\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "one.attributes_vocab.txt", "one.h5",
                                                          "one.objects_vocab.txt", "two.attributes_vocab.txt",
                                                          "two.h5", "two.objects_vocab.txt"]


def test_grid_descriptor_and_feature_by_hand() -> None:
    grid = GridExtractor({"grid_size": 1, "feature_dim": 8, "seed": 3})
    red = np.zeros((6, 8, 3), dtype=np.uint8)
    red[..., 0] = 255
    d = grid.descriptors(red)[0]
    expected = np.zeros(DESCRIPTOR_DIM, dtype=np.float32)
    expected[0] = 1.0  # mean R; G, B and every std are 0
    expected[6 + 3 * 16] = 1.0  # the colour histogram's (R bin 3, G bin 0, B bin 0) holds every pixel
    np.testing.assert_allclose(d, expected, atol=1e-6)  # a flat image has no gradient
    feature = grid.extract([red])[0].features[0]
    by_hand = np.maximum(grid.projection[0] + grid.projection[6 + 48] + grid.bias, 0)
    np.testing.assert_allclose(feature, by_hand, rtol=1e-5, atol=1e-6)

    edge = np.zeros((4, 8, 3), dtype=np.uint8)
    edge[:, 4:] = 255  # black | white: horizontal gradients only (orientation 0), at columns 3 and 4
    d = grid.descriptors(edge)[0]
    np.testing.assert_allclose(d[:6], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5], atol=1e-6)
    assert d[6] == pytest.approx(np.sqrt(0.5)) and d[6 + 63] == pytest.approx(np.sqrt(0.5))
    hog = d[70:106].reshape(4, 9)  # quarters top-left, top-right, bottom-left, bottom-right
    np.testing.assert_allclose(hog[:, 0], [0.5, 0.5, 0.5, 0.5], atol=1e-5)
    assert np.abs(hog[:, 1:]).max() < 1e-6
    assert d[106] == pytest.approx(0.125, abs=1e-5)  # 2 of 8 columns with |gx| = 0.5


@needs_reader
def test_unreadable_image_is_an_error_naming_it_and_leaves_nothing(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, ["a", "b", "c"])
    (images / "broken.png").write_bytes(b"this is not a PNG")
    out = run_cli(["data", "extract", images, tmp_path / "out.h5", "--extractor", "grid", "--quiet"], code=2)
    assert flat(str(images / "broken.png")) in out and "cannotreadtheimage" in out and "--skip-bad" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]

    # A PNG cut short also fails only when decoded; --skip-bad counts both and keeps the rest.
    (images / "cut.png").write_bytes((images / "a.png").read_bytes()[:60])
    out = run_cli(["data", "extract", images, tmp_path / "out.h5", "--extractor", "grid", "--skip-bad",
                   "--option", "grid_size=2", "--option", "feature_dim=8"])
    assert "2unreadableskipped" in out and flat(f"skipped {images / 'cut.png'}") in out
    store = FeatureStore(tmp_path / "out.h5")
    assert store.ids() == ["a", "b", "c"] and store.image("c")["visual_feats"].shape == (4, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out.attributes_vocab.txt", "out.h5",
                                                          "out.objects_vocab.txt"]


@needs_reader
def test_option_and_input_mistakes_are_clear(tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["a", "b", "c"])
    base = ["data", "extract", tmp_path / "images", tmp_path / "out.h5"]
    assert "didyoumean'grid'" in run_cli([*base, "--extractor", "gird"], code=2)
    out = run_cli([*base, "--extractor", "grid", "--option", "grid=3"], code=2)
    assert "hasnooption'grid'" in out and "grid_size" in out
    assert "optiongrid_sizemustbeaninteger(default6),got'big'" in run_cli([*base, "--extractor", "grid", "--option", "grid_size=big"], code=2)
    assert "optiongrid_sizemustbeapositive" in run_cli([*base, "--extractor", "grid", "--option", "grid_size=0"],
                                                          code=2)
    assert "holdsnoimage" in run_cli(["data", "extract", tmp_path, tmp_path / "out.h5", "--extractor", "grid"], code=2)
    (tmp_path / "images" / "a.jpeg").write_bytes(b"")
    assert "sameimageid'a'" in run_cli([*base, "--extractor", "grid"], code=3)
    (tmp_path / "images" / "a.jpeg").unlink()
    (tmp_path / "out.h5").write_text("keep me")
    assert "--overwrite" in run_cli([*base, "--extractor", "grid"], code=2)
    assert (tmp_path / "out.h5").read_text() == "keep me"


def test_without_an_image_library_the_error_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(np.zeros((2, 2, 3), dtype=np.uint8)))
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    monkeypatch.setitem(sys.modules, "torchvision", None)
    out = run_cli(["data", "extract", tmp_path / "images", tmp_path / "out.h5", "--extractor", "grid"], code=2)
    assert flat('pip install "mmcore-vlp[images]"') in out
    assert not (tmp_path / "out.h5").exists()


def test_detector_is_registered_and_says_what_it_needs(tmp_path: Path) -> None:
    assert "torchvision_detector" in run_cli(["data", "extractors"])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(np.zeros((2, 2, 3), dtype=np.uint8)))
    try:
        import torchvision  # noqa: F401
    except ImportError:
        out = run_cli(["data", "extract", tmp_path / "images", tmp_path / "out.h5", "--extractor",
                       "torchvision_detector", "--option", "weights=w.pt"], code=2)
        assert "needstorchvision,whichisnotinstalled" in out and "pipinstalltorchvision" in out
    else:
        out = run_cli(["data", "extract", tmp_path / "images", tmp_path / "out.h5", "--extractor",
                       "torchvision_detector"], code=2)
        assert "needs--optionweights=PATH" in out
    assert not (tmp_path / "out.h5").exists()


def test_detector_boxes_labels_and_features(tmp_path: Path) -> None:
    pytest.importorskip("torchvision", reason="torchvision_detector runs only where torchvision is installed")
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)  # random weights: the pipeline is under test, not the detections
    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict(),
               tmp_path / "frcnn.pt")
    write_images(tmp_path / "images", ["a", "b", "c"])
    out = run_cli(["data", "extract", tmp_path / "images", tmp_path / "det.h5", "--extractor", "torchvision_detector",
                   "--option", f"weights={tmp_path / 'frcnn.pt'}", "--option", "max_boxes=5", "--option",
                   "min_size=64", "--option", "max_size=96", "--option", "device=cpu", "--quiet"])
    assert "3images,upto5regionsof1024-dfeatures" in out
    store = FeatureStore(tmp_path / "det.h5")
    names = (tmp_path / "det.objects_vocab.txt").read_text().splitlines()
    assert len(names) == 91 and names[1] == "person"
    for img_id in ("a", "b", "c"):
        x = store.image(img_id)
        n = store.num_boxes(img_id)
        boxes = x["visual_pos"][:n]
        assert boxes.min() >= 0 and boxes.max() <= 1 and (boxes[:, 2:] >= boxes[:, :2]).all()
        assert ((x["obj_labels"][:n] >= 1) & (x["obj_labels"][:n] < 91)).all()
        assert (np.diff(x["obj_conf"][:n]) <= 1e-6).all()  # the top-N by score, best first
        assert np.isfinite(x["visual_feats"]).all() and x["visual_feats"].shape == (5, 1024)


# ---- the paper recipes on LXMERT's files -------------------------------------------------------------------

PAPER_RECIPES = ["recipes/paper/msp_tps_lxmert_data.yaml", "recipes/paper/vanilla_lxmert_data.yaml"]


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_recipes_validate_without_the_data(recipe: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-data"
    run_cli(["validate", ROOT / recipe, "--set", f"datasets.lxmert.data_root={missing}"])
    shown = run_cli(["show", ROOT / recipe, "--set", f"datasets.lxmert.data_root={missing}"])
    assert flat(f"data_root: {missing}") in shown and "hidden_size:768" in shown
    assert "lr:5.0e-05" in shown  # the paper's fine-tuning lr
    assert ("lr:1.0e-05" in shown) == ("msp" in recipe)  # and its pre-training lr, where there is pre-training


def test_paper_recipe_run_stops_at_a_missing_data_root(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-data"
    out = run_cli(["run", ROOT / PAPER_RECIPES[0], "--set", f"datasets.lxmert.data_root={missing}",
                   "--output-dir", tmp_path / "runs", "--quiet"], code=2)
    assert flat(f"data_root {missing} is not a directory") in out
    assert not any((tmp_path / "runs").rglob("*.yaml"))  # no run directory left behind


# ---- a two-stage curriculum on an extracted store, through the lxmert dataset -------------------------------

COCO = [f"COCO_train2014_{n:012d}" for n in (9, 25, 30, 42)]
CAPTIONS = ["a red bus on a road", "a dog next to a man", "a tall green tree", "two horses in a field"]
PHRASES = ["red bus", "grey road", "white dog", "tall man", "green tree", "blue sky", "brown horse", "green field"]
RECIPE = """\
name: grid
seed: 0
log_every: 1
eval_batch_size: 4
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  lxmert:
    data_root: ROOT
    objects_vocab: images/grid.objects_vocab.txt
    attributes_vocab: images/grid.attributes_vocab.txt
    pretrain_train: [lxmert/mscoco_train.json]
    pretrain_features: [images/grid.h5]
stages:
  - {name: phrase, data: {view: phrase}, tasks: {mlm: {}, mrfr: {}}, max_steps: 2, batch_size: 2}
  - {name: sentence, data: {view: sentence}, tasks: {mlm: {}, mrfr: {}, itm: {}}, max_steps: 2, batch_size: 2}
"""


@needs_reader
def test_two_stage_curriculum_on_grid_features_through_lxmert(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_images(root / "raw", COCO[:3])
    (root / "raw" / f"{COCO[3]}.png").write_bytes(png_bytes(np.full((10, 10, 3), 90, dtype=np.uint8)))
    run_cli(["data", "extract", root / "raw", root / "images" / "grid.h5", "--extractor", "grid", "--option",
             "grid_size=2", "--option", "feature_dim=16", "--quiet"])
    records = [{"img_id": img_id, "sentf": {"mscoco": [caption], "vg": PHRASES[2 * i : 2 * i + 2]}}
               for i, (img_id, caption) in enumerate(zip(COCO, CAPTIONS))]
    (root / "lxmert").mkdir()
    (root / "lxmert" / "mscoco_train.json").write_text(json.dumps(records))
    build_wordpiece(CAPTIONS + PHRASES, root, vocab_size=200, required=["none"])
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(textwrap.dedent(RECIPE).replace("ROOT", str(root)))
    out = run_cli(["run", recipe, "--output-dir", tmp_path / "runs", "--run-name", "r",
                   "--cache-dir", tmp_path / "cache"])
    assert flat("lxmert sentence/train: 4 mscoco captions of 4 images") in out
    results = json.loads((tmp_path / "runs" / "grid" / "r" / "results.json").read_text())
    assert results["_stages"]["phrase"]["steps"] == 2 and results["_stages"]["sentence"]["steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "runs" / "grid" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any("mrfr" in r and "itm" in r for r in records if r["scope"] == "sentence")
