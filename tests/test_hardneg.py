"""Hard negatives: nearest images by Euclidean distance of mean-pooled features, self excluded."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mmcore.data.hardneg import (
    load_hard_negatives,
    load_vilbert_hard_negatives,
    nearest_images,
    save_hard_negatives,
)
from mmcore.errors import MMCoreError

# Five points in the plane; distances worked out by hand:
#   p0 (0,0):   p1 1, p2 2, p3 √18≈4.24, p4 √200≈14.1
#   p1 (1,0):   p0 1, p2 √5≈2.24, p3 √13≈3.61, p4 √181≈13.5
#   p2 (0,2):   p0 2, p1 √5≈2.24, p3 √10≈3.16, p4 √164≈12.8
#   p3 (3,3):   p2 √10≈3.16, p1 √13≈3.61, p0 √18≈4.24, p4 √98≈9.90
#   p4 (10,10): p3 √98≈9.90, p2 √164≈12.8, p1 √181≈13.5, p0 √200≈14.1
POINTS = np.array([[0, 0], [1, 0], [0, 2], [3, 3], [10, 10]], dtype=np.float32)
TOP3 = [[1, 2, 3], [0, 2, 3], [0, 1, 3], [2, 1, 0], [3, 2, 1]]


@pytest.mark.parametrize("chunk", [1, 2, 1024])
def test_hand_computed_example(chunk: int) -> None:
    assert nearest_images(POINTS, top=3, chunk=chunk).tolist() == TOP3


def test_top_is_clipped_to_the_other_images() -> None:
    pool = nearest_images(POINTS, top=100, chunk=2)
    assert pool.shape == (5, 4)
    assert pool[:, :3].tolist() == TOP3 and pool[:, 3].tolist() == [4, 4, 4, 4, 0]
    assert nearest_images(POINTS[:1], top=5).shape == (1, 0)


def test_matches_brute_force_and_excludes_self() -> None:
    feats = np.random.default_rng(0).standard_normal((57, 9)).astype(np.float32)
    brute = np.linalg.norm(feats[:, None, :].astype(np.float64) - feats[None, :, :], axis=-1)
    np.fill_diagonal(brute, np.inf)
    expected = np.argsort(brute, axis=1, kind="stable")[:, :10]
    pool = nearest_images(feats, top=10, chunk=8)
    np.testing.assert_array_equal(pool, expected)
    assert not (pool == np.arange(57)[:, None]).any()


def test_npz_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "hard_negatives.npz"
    ids = ["a", "b", "c", "d", "e"]
    save_hard_negatives(path, ids, nearest_images(POINTS, top=3))
    assert path.exists() and not (tmp_path / "hard_negatives.npz.tmp").exists()
    with np.load(path, allow_pickle=False) as data:  # a safe format: no pickle needed
        assert data["pool"].tolist() == TOP3
    hard = load_hard_negatives(path)
    assert hard == {"a": ["b", "c", "d"], "b": ["a", "c", "d"], "c": ["a", "b", "d"],
                    "d": ["c", "b", "a"], "e": ["d", "c", "b"]}
    with pytest.raises(MMCoreError, match="pool must be"):
        save_hard_negatives(path, ids[:2], nearest_images(POINTS, top=3))


def test_vilbert_pickle_needs_an_explicit_flag(tmp_path: Path) -> None:
    path = tmp_path / "hard_negative.pkl"
    # ViLBERT's layout: column 0 is the image itself.
    pool = np.concatenate([np.arange(5)[:, None], np.array(TOP3)], axis=1)
    with open(path, "wb") as f:
        pickle.dump({"train_image_list": ["a", "b", "c", "d", "e"], "train_hard_pool": pool}, f)
    with pytest.raises(MMCoreError, match="allow_pickle"):
        load_vilbert_hard_negatives(path)
    hard = load_vilbert_hard_negatives(path, allow_pickle=True)
    assert hard["d"] == ["c", "b", "a"] and all(k not in v for k, v in hard.items())
