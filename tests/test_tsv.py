"""`mmcore data convert-tsv` and `mmcore data hard-negatives` on tiny files in the released formats."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mmcore.cli import main
from mmcore.data.hardneg import (
    load_hard_negatives,
    nearest_images,
    nearest_images_torch,
)
from mmcore.data.hubness import balancing_weights, text_blind_loss
from mmcore.data.store import FeatureStore
from mmcore.data.tsv import convert_tsv, encode_tsv_line
from mmcore.errors import MMCoreError

# Three images; region counts 3, 2, 4 (the region axis must grow at the third). Boxes in pixels.
IMAGES = [
    {"img_id": "COCO_train2014_000000000009", "h": 100, "w": 200, "n": 3},
    {"img_id": "2375429", "h": 50, "w": 50, "n": 2},
    {"img_id": "train-10171-0-img0", "h": 400, "w": 300, "n": 4},
]
DIM = 8


def image_arrays(index: int, spec: dict) -> dict:
    """Deterministic arrays for one image: features i*10 + region + dim/8, ids and confidences by region."""
    n = spec["n"]
    feats = np.array([[index * 10 + r + d / 8 for d in range(DIM)] for r in range(n)], dtype=np.float32)
    boxes = np.array([[0, 0, spec["w"], spec["h"]]] + [[10 * r, 5 * r, spec["w"] / 2, spec["h"] / 2]
                                                        for r in range(1, n)], dtype=np.float32)
    return {"obj_ids": np.arange(n) + index, "obj_conf": np.linspace(0.9, 0.5, n), "attr_ids": np.arange(n) * 2,
            "attr_conf": np.full(n, 0.25), "boxes": boxes, "features": feats}


def tsv_line(index: int, spec: dict) -> str:
    a = image_arrays(index, spec)
    return encode_tsv_line(spec["img_id"], spec["h"], spec["w"], a["obj_ids"], a["obj_conf"], a["attr_ids"],
                           a["attr_conf"], a["boxes"], a["features"])


def write_tsv(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines))
    return path


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args], terminal_width=200)


def ok(args: list[str]) -> str:
    result = invoke(args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def fails(args: list[str], *needles: str, code: int = 2) -> str:
    """The command fails with ``code`` (2: usage, 3: a data file's content) and says each needle, no traceback."""
    result = invoke(args)
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    flat = "".join(result.output.split())  # the console may wrap long lines anywhere
    for needle in needles:
        assert "".join(needle.split()) in flat, (needle, result.output)
    return result.output


@pytest.fixture
def tsv(tmp_path: Path) -> Path:
    return write_tsv(tmp_path / "feats.tsv", [tsv_line(i, s) for i, s in enumerate(IMAGES)])


def test_convert_writes_the_store_layout(tsv: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    text = ok(["data", "convert-tsv", tsv, out, "--verify"])
    assert "3 images" in text and "verified" in text and "images/s" in text
    assert not (tmp_path / "feats.h5.tmp").exists()
    store = FeatureStore(out)
    assert store.ids() == [s["img_id"] for s in IMAGES]
    assert (store.max_boxes, store.feature_dim) == (4, DIM)  # grew from 3 to 4 at the third image
    with h5py.File(out, "r") as f:
        assert f["features"].dtype == np.float16 and f["features"].chunks == (1, 3, DIM)
        assert f["num_boxes"][:].tolist() == [3, 2, 4]
    first = store.image(IMAGES[0]["img_id"])
    # Region 1 of image 0: pixels (10, 5, 100, 50) in a 200×100 image.
    np.testing.assert_allclose(first["visual_pos"][1], [0.05, 0.05, 0.5, 0.5])
    np.testing.assert_allclose(first["visual_pos"][0], [0, 0, 1, 1])
    assert first["visual_pos"][3].tolist() == [0, 0, 0, 0] and first["visual_mask"].tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(first["visual_feats"][:3], image_arrays(0, IMAGES[0])["features"])  # exact in fp16
    assert not first["visual_feats"][3].any()
    third = store.image(IMAGES[2]["img_id"])
    assert third["obj_labels"].tolist() == [2, 3, 4, 5] and third["attr_labels"].tolist() == [0, 2, 4, 6]
    np.testing.assert_allclose(third["obj_conf"], np.linspace(0.9, 0.5, 4), rtol=1e-6)
    assert third["attr_conf"].tolist() == [0.25] * 4
    np.testing.assert_allclose(third["visual_pos"][2], [20 / 300, 10 / 400, 0.5, 0.5], rtol=1e-6)


def test_float32_on_request_and_several_inputs(tmp_path: Path) -> None:
    a = write_tsv(tmp_path / "a.tsv", [tsv_line(0, IMAGES[0])])
    features = np.array([[1 / 3] * DIM, [1e-5] * DIM], dtype=np.float32)  # not exact in float16
    b = write_tsv(tmp_path / "b.tsv", [tsv_line(1, IMAGES[1]).replace(
        base64.b64encode(image_arrays(1, IMAGES[1])["features"].tobytes()).decode(),
        base64.b64encode(features.tobytes()).decode())])
    out = tmp_path / "ab.h5"
    text = ok(["data", "convert-tsv", a, b, out, "--dtype", "float32"])
    assert "2 images" in text
    store = FeatureStore(out)
    assert store.ids() == [IMAGES[0]["img_id"], IMAGES[1]["img_id"]]
    np.testing.assert_array_equal(store.image(IMAGES[1]["img_id"])["visual_feats"][:2], features)


def test_existing_output_needs_overwrite(tsv: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    ok(["data", "convert-tsv", tsv, out])
    fails(["data", "convert-tsv", tsv, out], "already exists", "--overwrite")
    ok(["data", "convert-tsv", tsv, out, "--overwrite"])


def cut(line: str, keep: int) -> str:
    return line[:keep] + "\n"


@pytest.mark.parametrize("case", ["truncated", "length", "missing_field", "not_a_number", "swapped_size"])
def test_bad_lines_name_file_and_line_and_leave_nothing(tmp_path: Path, case: str) -> None:
    good = [tsv_line(i, s) for i, s in enumerate(IMAGES)]
    fields = good[1].rstrip("\n").split("\t")
    if case == "truncated":  # the line stops inside the features field
        bad = cut(good[1], len(good[1]) - 30)
        expect = "features"
    elif case == "length":  # num_boxes says 3 but the arrays hold 2 rows
        bad = "\t".join(fields[:7] + ["3"] + fields[8:]) + "\n"
        expect = "num_boxes 3"
    elif case == "missing_field":
        bad = "\t".join(fields[:9]) + "\n"
        expect = "missing features"
    elif case == "not_a_number":
        bad = "\t".join(fields[:1] + ["tall"] + fields[2:]) + "\n"
        expect = "img_h is not an integer"
    else:  # boxes of a 50×50 image declared as 10×10
        bad = "\t".join(fields[:1] + ["10", "10"] + fields[3:]) + "\n"
        expect = "outside the 10×10 image"
    path = write_tsv(tmp_path / "bad.tsv", [good[0], bad, good[2]])
    out = tmp_path / "bad.h5"
    fails(["data", "convert-tsv", path, out], f"{path}:2", expect, code=3)
    assert not out.exists() and not (tmp_path / "bad.h5.tmp").exists()


def test_duplicate_image_across_inputs(tsv: Path, tmp_path: Path) -> None:
    again = write_tsv(tmp_path / "again.tsv", [tsv_line(0, IMAGES[0])])
    fails(["data", "convert-tsv", tsv, again, tmp_path / "x.h5"], f"{again}:1", "already read at", f"{tsv}:1", code=3)


def test_float16_overflow_asks_for_float32(tmp_path: Path) -> None:
    spec = IMAGES[1]
    a = image_arrays(1, spec)
    a["features"][0, 0] = 1e6
    path = write_tsv(tmp_path / "big.tsv", [encode_tsv_line(spec["img_id"], spec["h"], spec["w"], a["obj_ids"],
                                                            a["obj_conf"], a["attr_ids"], a["attr_conf"], a["boxes"],
                                                            a["features"])])
    fails(["data", "convert-tsv", path, tmp_path / "big.h5"], f"{path}:1", "--dtype float32", code=3)
    ok(["data", "convert-tsv", path, tmp_path / "big.h5", "--dtype", "float32"])


def test_interrupted_conversion_leaves_no_store_and_reruns_cleanly(tsv: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"

    def interrupt(done_bytes: int, images: int) -> None:
        if images == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_tsv([tsv], out, progress=interrupt)
    assert not out.exists() and not (tmp_path / "feats.h5.tmp").exists()
    # A killed run leaves its temporary file behind; the next run replaces it.
    (tmp_path / "feats.h5.tmp").write_bytes(b"half an HDF5 file")
    result = convert_tsv([tsv], out)
    assert result.images == 3 and FeatureStore(out).ids()[2] == IMAGES[2]["img_id"]
    assert not (tmp_path / "feats.h5.tmp").exists()


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "empty.tsv", ["\n"])
    with pytest.raises(MMCoreError, match="no image found"):
        convert_tsv([path], tmp_path / "empty.h5")
    assert not (tmp_path / "empty.h5").exists()


# ---- hard negatives ----------------------------------------------------------------------------------------

# Mean-pooled features = the five points of tests/test_hardneg.py, whose nearest neighbours were worked out by hand.
POINTS = [[0, 0], [1, 0], [0, 2], [3, 3], [10, 10]]
TOP3 = [[1, 2, 3], [0, 2, 3], [0, 1, 3], [2, 1, 0], [3, 2, 1]]


def point_store(tmp_path: Path) -> Path:
    lines = []
    for i, (x, y) in enumerate(POINTS):
        # Image 3 has three regions averaging to its point; padding must not enter the mean.
        feats = np.array([[x, y]] if i != 3 else [[x - 1, y], [x + 1, y + 2], [x, y - 2]], dtype=np.float32)
        n = len(feats)
        lines.append(encode_tsv_line(f"img{i}", 10, 10, np.zeros(n), np.ones(n), np.zeros(n), np.ones(n),
                                     np.tile([0, 0, 10, 10], (n, 1)), feats))
    tsv = write_tsv(tmp_path / "points.tsv", lines)
    ok(["data", "convert-tsv", tsv, tmp_path / "points.h5", "--dtype", "float32"])
    return tmp_path / "points.h5"


def test_hard_negatives_cli_hand_computed(tmp_path: Path) -> None:
    store = point_store(tmp_path)
    out = tmp_path / "hard.npz"
    text = ok(["data", "hard-negatives", store, out, "--top", "3", "--device", "cpu", "--chunk", "2"])
    assert "5 images × 3" in text
    with np.load(out, allow_pickle=False) as data:
        assert data["pool"].tolist() == TOP3 and data["image_ids"].tolist() == [f"img{i}" for i in range(5)]
    # The hub report: the loss floors of mmcore.data.hubness for this pool, as printed (3 decimals).
    uniform = text_blind_loss(np.array(TOP3))
    balanced = text_blind_loss(np.array(TOP3), balancing_weights(np.array(TOP3), 5))
    assert f"{uniform:.3f} with uniform draws from the lists, {balanced:.3f} with balanced draws" in text
    assert uniform < balanced < 0.694  # image 4 is in no list: it is never mismatched
    assert load_hard_negatives(out)["img4"] == ["img3", "img2", "img1"]


def test_torch_neighbours_equal_numpy() -> None:
    feats = np.random.default_rng(1).standard_normal((67, 12)).astype(np.float32) + 5.0
    expected = nearest_images(feats, top=9)
    for chunk in (1, 10, None):
        np.testing.assert_array_equal(nearest_images_torch(feats, top=9, chunk=chunk), expected)
    # A memory bound of one block per row still gives the same answer.
    np.testing.assert_array_equal(nearest_images_torch(feats, top=9, memory_mb=1), expected)


def test_vilbert_import_needs_trust_pickle(tmp_path: Path) -> None:
    store = point_store(tmp_path)
    pkl = tmp_path / "hard_negative.pkl"
    pool = np.concatenate([np.arange(5)[:, None], np.array(TOP3)], axis=1)  # ViLBERT: column 0 is the image
    with open(pkl, "wb") as f:
        pickle.dump({"train_image_list": [f"img{i}" for i in range(5)], "train_hard_pool": pool}, f)
    out = tmp_path / "vilbert.npz"
    fails(["data", "hard-negatives", "--from-vilbert", pkl, out], "refusing to read", "--trust-pickle")
    assert not out.exists()
    ok(["data", "hard-negatives", "--from-vilbert", pkl, "--trust-pickle", store, out, "--top", "2"])
    with np.load(out, allow_pickle=False) as data:
        assert data["pool"].tolist() == [row[:2] for row in TOP3]
    with open(pkl, "wb") as f:
        pickle.dump({"train_image_list": ["img0", "nowhere"], "train_hard_pool": np.array([[0, 1], [1, 0]])}, f)
    fails(["data", "hard-negatives", "--from-vilbert", pkl, "--trust-pickle", store, tmp_path / "v2.npz"],
          "1 of 2 images are in none of the stores", "nowhere")


@pytest.mark.gpu
def test_cuda_neighbours_equal_numpy() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    feats = np.random.default_rng(2).standard_normal((700, 64)).astype(np.float32)
    np.testing.assert_array_equal(nearest_images_torch(feats, top=20, device="cuda", chunk=128),
                                  nearest_images(feats, top=20))
