"""The HDF5 feature store: round trip, atomic writes, clear errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mmcore.data.store import FeatureStore, FeatureStoreWriter, write_feature_store
from mmcore.errors import MMCoreError

O, F = 4, 6


def _image(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    lo = rng.uniform(0, 0.5, size=(n, 2))
    return {
        "features": rng.standard_normal((n, F)).astype(np.float32),
        "boxes": np.concatenate([lo, lo + rng.uniform(0.1, 0.5, size=(n, 2))], axis=1).astype(np.float32),
        "obj_ids": rng.integers(0, 10, size=n),
        "obj_conf": rng.uniform(size=n).astype(np.float32),
        "attr_ids": rng.integers(0, 5, size=n),
        "attr_conf": rng.uniform(size=n).astype(np.float32),
    }


def _write(path: Path) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    images = {"img_a": _image(rng, 4), "img_b": _image(rng, 2), "COCO_val2014_000000000042": _image(rng, 3)}
    with FeatureStoreWriter(path, len(images), O, F) as writer:
        for img_id, fields in images.items():
            writer.add(img_id, **fields)
    return images


@pytest.mark.parametrize("in_memory", [True, False])
def test_round_trip(tmp_path: Path, in_memory: bool) -> None:
    path = tmp_path / "features.h5"
    images = _write(path)
    store = FeatureStore(path, in_memory=in_memory)
    assert store.ids() == list(images) and len(store) == 3
    assert "img_b" in store and "nope" not in store
    assert (store.feature_dim, store.max_boxes) == (F, O)
    for img_id, src in images.items():
        n = len(src["features"])
        ex = store.image(img_id)
        assert ex["img_id"] == img_id
        expected_types = {"visual_feats": (np.float32, (O, F)), "visual_pos": (np.float32, (O, 4)),
                          "visual_mask": (np.int64, (O,)), "obj_labels": (np.int64, (O,)),
                          "obj_conf": (np.float32, (O,)), "attr_labels": (np.int64, (O,)),
                          "attr_conf": (np.float32, (O,))}
        for key, (dtype, shape) in expected_types.items():
            assert ex[key].dtype == dtype and ex[key].shape == shape, key
        assert ex["visual_mask"].tolist() == [1] * n + [0] * (O - n)
        # float16 storage: features round to ~3 significant digits.
        np.testing.assert_allclose(ex["visual_feats"][:n], src["features"], rtol=2e-3, atol=2e-3)
        assert not ex["visual_feats"][n:].any() and not ex["obj_conf"][n:].any()
        np.testing.assert_array_equal(ex["visual_pos"][:n], src["boxes"])
        np.testing.assert_array_equal(ex["obj_labels"][:n], src["obj_ids"])
        np.testing.assert_array_equal(ex["attr_labels"][:n], src["attr_ids"])
        np.testing.assert_array_equal(ex["attr_conf"][:n], src["attr_conf"])
        np.testing.assert_array_equal(store.labels(img_id), src["obj_ids"])
    # Examples are fresh arrays: a task may modify one without touching the store.
    ex = store.image("img_a")
    ex["visual_feats"][:] = 0
    assert store.image("img_a")["visual_feats"].any()
    pooled = store.mean_pooled(chunk=2)
    for i, src in enumerate(images.values()):
        expected = src["features"].astype(np.float16).astype(np.float32).mean(0)
        np.testing.assert_allclose(pooled[i], expected, rtol=1e-5, atol=1e-6)


def test_layout_matches_the_format(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    _write(path)
    with h5py.File(path, "r") as f:
        assert dict(f.attrs) == {"feature_dim": F, "max_boxes": O, "format_version": 1}
        assert f["features"].dtype == np.float16 and f["features"].chunks == (1, O, F)
        assert f["boxes"].dtype == np.float32 and f["num_boxes"].dtype == np.int32
        assert f["obj_ids"].dtype == np.int64 and f["attr_conf"].dtype == np.float32
        assert f["num_boxes"][:].tolist() == [4, 2, 3]


def test_bulk_writer(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 3
    arrays = dict(features=rng.standard_normal((n, O, F)), boxes=np.full((n, O, 4), 0.5, np.float32),
                  num_boxes=np.array([4, 4, 1]), obj_ids=np.ones((n, O), np.int64), obj_conf=np.ones((n, O)),
                  attr_ids=np.zeros((n, O), np.int64), attr_conf=np.ones((n, O)))
    path = write_feature_store(tmp_path / "s.h5", ["a", "b", "c"], **arrays)
    assert FeatureStore(path).image("c")["visual_mask"].tolist() == [1, 0, 0, 0]


def test_temp_then_rename(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(path, 1, O, F) as writer:
        writer.add("x", **_image(rng, 2))
        assert not path.exists() and (tmp_path / "features.h5.tmp").exists()
    assert path.exists() and not (tmp_path / "features.h5.tmp").exists()


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError), FeatureStoreWriter(path, 2, O, F) as writer:
        writer.add("x", **_image(rng, 2))
        raise RuntimeError("converter crashed")
    assert not path.exists() and not (tmp_path / "features.h5.tmp").exists()
    with pytest.raises(MMCoreError, match="1 images written, 2 declared"):
        with FeatureStoreWriter(path, 2, O, F) as writer:
            writer.add("x", **_image(rng, 2))
    assert not path.exists() and not (tmp_path / "features.h5.tmp").exists()


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    fields = _image(rng, 2)
    fields["boxes"] = fields["boxes"] * 640  # pixels, not normalised
    with pytest.raises(MMCoreError, match="normalised"):
        with FeatureStoreWriter(tmp_path / "s.h5", 1, O, F) as writer:
            writer.add("x", **fields)
    with pytest.raises(MMCoreError, match="more than max_boxes"):
        with FeatureStoreWriter(tmp_path / "s.h5", 1, O, F) as writer:
            writer.add("x", **_image(rng, O + 1))
    assert not (tmp_path / "s.h5").exists()


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    _write(path)
    with h5py.File(path, "a") as f:
        del f["attr_conf"]
    with pytest.raises(MMCoreError) as info:
        FeatureStore(path)
    assert str(path) in str(info.value) and "'attr_conf'" in str(info.value)


def test_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    _write(path)
    with h5py.File(path, "a") as f:
        del f["boxes"]
        f.create_dataset("boxes", data=np.zeros((3, O, 5), np.float32))
    with pytest.raises(MMCoreError, match=r"dataset 'boxes' has shape \(3, 4, 5\), expected \(3, 4, 4\)"):
        FeatureStore(path)


def test_unknown_image_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    _write(path)
    with pytest.raises(MMCoreError, match="'nope' is not in the feature store"):
        FeatureStore(path).image("nope")
    with pytest.raises(MMCoreError, match="does not exist"):
        FeatureStore(tmp_path / "absent.h5")


def test_store_pickles_without_its_handle(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "features.h5"
    _write(path)
    store = FeatureStore(path, in_memory=False)
    store.image("img_a")  # opens the lazy handle
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.image("img_b")["visual_feats"], store.image("img_b")["visual_feats"])
    store.close()
    clone.close()
