"""Hard negatives: for each image, the images nearest to it by Euclidean distance of mean-pooled features.

mmcore's file is an ``.npz`` (read with ``allow_pickle=False``) holding ``image_ids`` (N,) strings and
``pool`` (N, top) int64 where row i lists the indices (into ``image_ids``) of the images nearest to image i,
nearest first, **the image itself excluded**. ViLBERT's pickled file (``train_image_list``,
``train_hard_pool``) instead puts the image itself in column 0; :func:`load_vilbert_hard_negatives` drops it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.data.fileio import atomic_path
from mmcore.errors import MMCoreError

__all__ = ["nearest_images", "save_hard_negatives", "load_hard_negatives"]

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


def nearest_images_torch(mean_feats: np.ndarray, top: int, device: str = "cpu", chunk: int | None = None,
                         memory_mb: int = 256, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """:func:`nearest_images` as chunked torch matrix products on ``device`` (``cpu``, ``cuda``, ``cuda:N``).

    Rows are processed ``chunk`` at a time, by default as many as keep one chunk's distance block under
    ``memory_mb``; beside it only the [N, F] features live on the device. Features are centred first (distances
    do not change) so float32 keeps the expansion ``|a|² + |b|² - 2 a·b`` accurate. Ties are broken by the lower
    index, as in :func:`nearest_images`. ``progress(n)`` is called with the rows finished by each chunk.
    """
    import torch

    feats32 = np.asarray(mean_feats, dtype=np.float32)
    if feats32.ndim != 2:
        raise MMCoreError(f"nearest_images expects a [N, F] matrix, got shape {feats32.shape}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MMCoreError(f"device {device!r} requested but CUDA is not available")
    n = len(feats32)
    k = max(0, min(int(top), n - 1))
    out = np.zeros((n, k), dtype=np.int64)
    if k == 0:
        return out
    centre = feats32.mean(axis=0, dtype=np.float64).astype(np.float32)
    feats = torch.from_numpy(feats32 - centre).to(dev)
    sq = (feats * feats).sum(dim=1)
    # A chunk's block plus the comparable temporaries of topk and the final sort.
    rows_fit = max(1, (int(memory_mb) << 20) // (3 * 4 * n))
    step = max(1, min(int(chunk) if chunk else rows_fit, rows_fit))
    for start in range(0, n, step):
        rows = feats[start : start + step]
        r = len(rows)
        dist = sq[start : start + r, None] + sq[None, :] - 2.0 * (rows @ feats.T)
        dist[torch.arange(r, device=dev), torch.arange(start, start + r, device=dev)] = float("inf")
        part = torch.topk(dist, k, dim=1, largest=False, sorted=False).indices
        part = torch.sort(part, dim=1).values  # index order, so the stable sort breaks distance ties by index
        order = torch.sort(torch.gather(dist, 1, part), dim=1, stable=True).indices
        out[start : start + r] = torch.gather(part, 1, order).cpu().numpy()
        if progress is not None:
            progress(r)
    return out


def save_hard_negatives(path: PathLike, image_ids: list[str], pool: np.ndarray) -> None:
    """Write mmcore's ``.npz`` hard-negative file (self excluded; see the module docstring), atomically."""
    pool = np.asarray(pool, dtype=np.int64)
    if pool.ndim != 2 or len(pool) != len(image_ids):
        raise MMCoreError(f"{path}: pool must be [len(image_ids), top], got {pool.shape} for {len(image_ids)} ids")
    if pool.size and (pool.min() < 0 or pool.max() >= len(image_ids)):
        raise MMCoreError(f"{path}: pool indices must lie in [0, {len(image_ids)})")
    # A file object keeps numpy from appending a second ".npz".
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
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
    ids, pool = _unpickle_vilbert(path, allow_pickle)
    return {img_id: [ids[j] for j in row if j != i] for i, (img_id, row) in enumerate(zip(ids, pool.tolist()))}


def read_vilbert_pool(path: PathLike, allow_pickle: bool = False) -> tuple[list[str], np.ndarray]:
    """ViLBERT's pickled file as ``(image_ids, pool)`` in mmcore's layout (each image removed from its own row),
    ready for :func:`save_hard_negatives`. Refuses without ``allow_pickle``, as
    :func:`load_vilbert_hard_negatives` does."""
    ids, pool = _unpickle_vilbert(path, allow_pickle)
    rows = [[j for j in row if j != i] for i, row in enumerate(pool.tolist())]
    width = min((len(r) for r in rows), default=0)
    return ids, np.array([r[:width] for r in rows], dtype=np.int64).reshape(len(ids), width)


def _unpickle_vilbert(path: PathLike, allow_pickle: bool) -> tuple[list[str], np.ndarray]:
    if not allow_pickle:
        raise MMCoreError(f"{path}: reading a pickled hard-negative file runs code from it; pass allow_pickle=True "
                          "only for a file you trust, or convert it to mmcore's .npz format")
    path = Path(path)
    if not path.is_file():
        raise MMCoreError(f"hard-negative file {path} does not exist")
    data: Any
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # guarded by the explicit allow_pickle flag above
    except UnicodeDecodeError:  # pickled by Python 2, as some released files were
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")  # same guard
    except (pickle.UnpicklingError, EOFError) as exc:
        raise MMCoreError(f"{path}: not a readable pickle ({exc})") from None
    try:
        ids = [str(i) for i in data["train_image_list"]]
        pool = np.asarray(data["train_hard_pool"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise MMCoreError(f"{path}: expected a dict with 'train_image_list' and 'train_hard_pool'") from None
    if pool.ndim != 2 or len(pool) != len(ids):
        raise MMCoreError(f"{path}: train_hard_pool has shape {pool.shape}, expected ({len(ids)}, top)")
    if pool.size and (pool.min() < 0 or pool.max() >= len(ids)):
        raise MMCoreError(f"{path}: train_hard_pool holds indices outside [0, {len(ids)})")
    return ids, pool
