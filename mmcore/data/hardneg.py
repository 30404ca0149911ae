"""Hard negatives: for each image, the images nearest to it by Euclidean distance of mean-pooled features.

mmcore's file is an ``.npz`` (read with ``allow_pickle=False``) holding ``image_ids`` (N,) strings and
``pool`` (N, top) int64 where row i lists the indices (into ``image_ids``) of the images nearest to image i,
nearest first, **the image itself excluded**. ViLBERT's pickled file (``train_image_list``,
``train_hard_pool``) instead puts the image itself in column 0; :func:`load_vilbert_hard_negatives` drops it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from mmcore.data.fileio import atomic_path
from mmcore.errors import MMCoreError

PathLike = str | os.PathLike[str]


def nearest_images(mean_feats: np.ndarray, top: int, chunk: int = 1024) -> np.ndarray:
    """Indices [N, min(top, N-1)] of each row's nearest other rows, nearest first (equal distances: lower index).

    Distances are computed ``chunk`` rows at a time as ``|a|² + |b|² - 2 a·b`` in float64, so memory stays at
    ``chunk × N`` numbers however large N is.
    """
    feats = np.asarray(mean_feats, dtype=np.float64)
    if feats.ndim != 2:
        raise MMCoreError(f"nearest_images expects a [N, F] matrix, got shape {feats.shape}")
    n = len(feats)
    k = max(0, min(int(top), n - 1))
    out = np.zeros((n, k), dtype=np.int64)
    if k == 0:
        return out
    sq = np.einsum("ij,ij->i", feats, feats)
    for start in range(0, n, max(1, int(chunk))):
        rows = feats[start : start + chunk]
        dist = sq[start : start + len(rows), None] + sq[None, :] - 2.0 * rows @ feats.T
        dist[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf
        # argpartition finds the k smallest cheaply; a stable sort of that shortlist orders them.
        # (Which of several rows tied exactly at the cut-off is kept is unspecified.)
        if k < n - 1:
            part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        else:
            part = np.argsort(dist, axis=1, kind="stable")[:, :k]
        part.sort(axis=1)  # index order first, so the stable sort below breaks distance ties by index
        d = np.take_along_axis(dist, part, axis=1)
        order = np.argsort(d, axis=1, kind="stable")
        out[start : start + len(rows)] = np.take_along_axis(part, order, axis=1)
    return out


def save_hard_negatives(path: PathLike, image_ids: list[str], pool: np.ndarray) -> None:
    """Write mmcore's ``.npz`` hard-negative file (self excluded; see the module docstring), atomically."""
    pool = np.asarray(pool, dtype=np.int64)
    if pool.ndim != 2 or len(pool) != len(image_ids):
        raise MMCoreError(f"{path}: pool must be [len(image_ids), top], got {pool.shape} for {len(image_ids)} ids")
    if pool.size and (pool.min() < 0 or pool.max() >= len(image_ids)):
        raise MMCoreError(f"{path}: pool indices must lie in [0, {len(image_ids)})")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending a second ".npz"
            np.savez(f, image_ids=np.array(image_ids, dtype=str), pool=pool)


def load_hard_negatives(path: PathLike) -> dict[str, list[str]]:
    """``{img_id: [nearest other image ids, nearest first]}`` from mmcore's ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise MMCoreError(f"hard-negative file {path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        for key in ("image_ids", "pool"):
            if key not in data:
                raise MMCoreError(f"{path}: missing array {key!r}; not an mmcore hard-negative file")
        ids = [str(i) for i in data["image_ids"]]
        pool = data["pool"]
    if pool.ndim != 2 or len(pool) != len(ids):
        raise MMCoreError(f"{path}: 'pool' has shape {pool.shape}, expected ({len(ids)}, top)")
    return {img_id: [ids[j] for j in row if j != i] for i, (img_id, row) in enumerate(zip(ids, pool.tolist()))}


def load_vilbert_hard_negatives(path: PathLike, allow_pickle: bool = False) -> dict[str, list[str]]:
    """Read ViLBERT's pickled file, dropping each image from its own list (ViLBERT's column 0).

    Unpickling can run arbitrary code, so this refuses unless ``allow_pickle`` is set explicitly; prefer
    converting once with :func:`save_hard_negatives`.
    """
    if not allow_pickle:
        raise MMCoreError(f"{path}: reading a pickled hard-negative file runs code from it; pass allow_pickle=True "
                          "only for a file you trust, or convert it to mmcore's .npz format")
    with open(path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - guarded by the explicit allow_pickle flag above
    try:
        ids = [str(i) for i in data["train_image_list"]]
        pool = np.asarray(data["train_hard_pool"], dtype=np.int64)
    except (KeyError, TypeError):
        raise MMCoreError(f"{path}: expected a dict with 'train_image_list' and 'train_hard_pool'") from None
    return {img_id: [ids[j] for j in row if j != i] for i, (img_id, row) in enumerate(zip(ids, pool.tolist()))}
