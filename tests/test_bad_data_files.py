"""Bad feature stores and annotation files: each read fails with an MMCoreError naming the file and the record,
dataset or image at fault, and a failed write leaves no file behind. (Runs over such files: test_bad_inputs.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmcore.data import annotations as ann
from mmcore.data.store import FeatureStore, write_feature_store
from mmcore.errors import MMCoreError

# ---- feature stores -----------------------------------------------------------------------------------------

N, O, F = 3, 4, 6


def _store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    zeros = np.zeros((N, O))
    return write_feature_store(path, ["a", "b", "c"], rng.standard_normal((N, O, F)), np.full((N, O, 4), 0.5),
                               np.array([4, 2, 3]), zeros, zeros, zeros, zeros)


def _replace(name: str, data: np.ndarray):
    def damage(path: Path) -> None:
        with h5py.File(path, "a") as f:
            del f[name]
            f.create_dataset(name, data=data)
    return damage


def _set_nan(path: Path) -> None:
    with h5py.File(path, "a") as f:
        f["features"][1, 0, 2] = np.nan


def _empty(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f.attrs.update({"feature_dim": F, "max_boxes": O, "format_version": 1})
        for name, shape in {"image_ids": (0,), "num_boxes": (0,), "features": (0, O, F), "boxes": (0, O, 4),
                            "obj_ids": (0, O), "obj_conf": (0, O), "attr_ids": (0, O), "attr_conf": (0, O)}.items():
            f.create_dataset(name, shape, dtype=h5py.string_dtype() if name == "image_ids" else np.float32)


def _delete(name: str):
    def damage(path: Path) -> None:
        with h5py.File(path, "a") as f:
            del f[name]
    return damage


def _plain_hdf5(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((N, O, F)))


@pytest.mark.parametrize(("damage", "expected"), [
    (_delete("obj_conf"), "missing dataset(s) 'obj_conf'"),
    (_replace("features", np.zeros((N, O * F), np.float16)),
     "dataset 'features' has shape (3, 24), expected (3, 4, 6) (N=3, max_boxes=4, feature_dim=6)"),
    (_replace("boxes", np.zeros((N, O, 3), np.float32)), "dataset 'boxes' has shape (3, 4, 3), expected (3, 4, 4)"),
    (_set_nan, "dataset 'features' holds NaN or inf for image 'b' (row 1)"),
    (_empty, "the feature store holds no images"),
    (_plain_hdf5, "missing file attribute 'feature_dim'; not an mmcore feature store"),
    (lambda p: p.write_text("img_id\tfeatures\n"), "cannot read the feature store; not an HDF5 file"),
    (lambda p: p.write_bytes(p.read_bytes()[:2000]), ("cannot read the feature store; not an HDF5 file, or it is "
                                                     "truncated or damaged")),
], ids=["missing-dataset", "features-2d", "boxes-3-columns", "nan-features", "empty", "not-mmcore", "not-hdf5",
        "truncated"])
def test_bad_feature_store(tmp_path, damage, expected):
    path = _store(tmp_path / "features.h5")
    damage(path)
    with pytest.raises(MMCoreError) as info:
        FeatureStore(path)
    assert str(info.value) == f"{path}: {expected}" or str(info.value).startswith(f"{path}: {expected}"), info.value


def test_nan_features_read_lazily_name_the_image(tmp_path):
    path = _store(tmp_path / "features.h5")
    _set_nan(path)
    store = FeatureStore(path, in_memory=False)
    assert np.isfinite(store.image("a")["visual_feats"]).all()  # only the bad image fails
    with pytest.raises(MMCoreError, match=r"dataset 'features' holds NaN or inf for image 'b' \(row 1\)"):
        store.image("b")
    store.close()


@pytest.mark.parametrize(("features", "ids", "expected"), [
    (np.where(np.arange(N * O * F).reshape(N, O, F) == 30, np.nan, 1.0), ["a", "b", "c"],
     "features of image 'b' hold NaN or inf; nothing saved"),
    (np.zeros((0, O, F)), [], "a feature store needs at least one image"),
], ids=["nan", "zero-images"])
def test_feature_store_writer_refuses_bad_data(tmp_path, features, ids, expected):
    n = len(ids)
    zeros = np.zeros((n, O))
    with pytest.raises(MMCoreError, match=expected.replace("(", r"\(")):
        write_feature_store(tmp_path / "features.h5", ids, features, np.full((n, O, 4), 0.5), np.full(n, O),
                            zeros, zeros, zeros, zeros)
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temporary file


# ---- annotation files ---------------------------------------------------------------------------------------

VQA_OK = {"img_id": "a", "question_id": 7, "sent": "what colour is the car?", "label": {"red": 0.6}}


@pytest.mark.parametrize(("reader", "name", "content", "expected"), [
    (ann.read_vqa, "vqa.json", '[{"img_id": "a",\n  "sent": }]', "{path}:2:11: not valid JSON: Expecting value"),
    (ann.read_vqa, "vqa.json", b"\xff\xfe[]", "{path}: not valid JSON: byte 0 is not UTF-8 text"),
    (ann.read_vqa, "vqa.json", [{k: v for k, v in VQA_OK.items() if k != "sent"}], "{path}: question 0 lacks 'sent'"),
    (ann.read_vqa, "vqa.json", [{**VQA_OK, "label": ["red"]}],
     "{path}: question 0 (question_id 7): 'label' must map answers to scores"),
    (ann.read_vqa, "vqa.json", [{**VQA_OK, "img_id": 12}], ("{path}: question 0 (question_id 7): 'img_id' must be a "
                                                           "string, got int 12")),
    (ann.read_vqa, "vqa.json", ["what colour is the car?"], "{path}: question 0 is a str, not a JSON object"),
    (ann.read_vqa, "vqa.json", {"questions": []}, "{path}: expected a JSON list of VQA questions, got dict"),
    (ann.read_pretrain, "pre.json", [{"sentf": {"mscoco": ["a dog"]}}], "{path}: record 0 lacks 'img_id'"),
    (ann.read_pretrain, "pre.json", [{"img_id": "a", "sentf": ["a dog"]}],
     "{path}: record 0 (a): 'sentf' must be an object mapping sources to sentence lists, got list"),
    (ann.read_pretrain, "pre.json", [{"img_id": "a", "sentf": {"mscoco": "a dog"}}],
     "{path}: record 0 (a): sentf['mscoco'] must be a list of strings"),
    (ann.read_retrieval, "ret.json", [{"img_path": "1.jpg", "sentences": "a dog"}],
     "{path}: entry 0 (1.jpg): 'sentences' must be a list of captions, got str"),
    (ann.read_vocab_txt, "objects_vocab.txt", b"dog\n\xff\n", "{path}: not a text vocabulary (byte 4 is not UTF-8)"),
], ids=["vqa-invalid-json", "vqa-not-utf8", "vqa-missing-key", "vqa-label-type", "vqa-img-id-type",
        "vqa-record-not-object", "vqa-not-a-list", "pretrain-missing-img-id", "pretrain-sentf-type",
        "pretrain-sentences-type", "retrieval-sentences-type", "vocab-not-utf8"])
def test_bad_annotation_file(tmp_path, reader, name, content, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    with pytest.raises(MMCoreError) as info:
        reader(path)
    assert str(info.value).startswith(expected.format(path=path)), info.value


def test_answer_table_of_the_wrong_shape(tmp_path):
    (tmp_path / ann.LABEL2ANS).write_text('["yes", "no"]')
    (tmp_path / ann.ANS2LABEL).write_text('[["yes", 0], ["no", 1]]')
    with pytest.raises(MMCoreError, match=f"{tmp_path / ann.ANS2LABEL}: expected a JSON object mapping answers"):
        ann.read_answer_table(tmp_path)
