"""Standardise a feature store: every feature dimension centred on its mean over the real regions of chosen
images (the training images), then all divided by one scale so that a dimension's variance is 1 on average;
padding rows stay zero. One scale, not one per dimension: a ReLU dimension that is almost always zero would
otherwise turn its rare activations into outliers of a hundred standard deviations.

Why: extracted features can share one large vector across every region. A ReLU of a biased random map of pixel
statistics does: on the drawn shapes of docs/your-data.md the mean region vector has norm 53 while a region's
own offset from it has norm 13 to 22, so images differ by a small offset on a constant that the backbone's linear map
and LayerNorm carry through, and VQA fine-tuning stays on the language prior instead of using the image.
Centring removes the common part.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from mmcore.data.store import FeatureStoreWriter

STATS_FILE = "feature_stats.npz"
_CHUNK = 256
_MIN_STD = 1e-6
_COPIED = ("boxes", "num_boxes", "obj_ids", "obj_conf", "attr_ids", "attr_conf")


def region_statistics(path: Path, image_ids: set[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], scale [F]) over the real regions of ``image_ids`` (every image when None), in float64; the scale
    is the same for every dimension: the root of their mean variance."""
    with h5py.File(path, "r") as f:
        ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in f["image_ids"][:]]
        dim = int(f.attrs["feature_dim"])
        total, squares, count = np.zeros(dim), np.zeros(dim), 0
        for start in range(0, len(ids), _CHUNK):
            feats = f["features"][start : start + _CHUNK].astype(np.float64)
            counts = f["num_boxes"][start : start + _CHUNK]
            keep = np.array([image_ids is None or i in image_ids for i in ids[start : start + _CHUNK]])
            real = (np.arange(feats.shape[1])[None, :] < counts[:, None]) & keep[:, None]
            rows = feats[real]
            total += rows.sum(0)
            squares += (rows**2).sum(0)
            count += len(rows)
    count = max(count, 1)
    mean = total / count
    scale = float(np.sqrt(np.maximum(squares / count - mean**2, 0.0).mean()))
    return mean, np.full(dim, scale if scale > _MIN_STD else 1.0)


def standardise_store(source: Path, output: Path, image_ids: set[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Write ``output``: ``source`` with standardised features (statistics of ``image_ids``); returns them."""
    mean, std = region_statistics(source, image_ids)
    with h5py.File(source, "r") as f:
        n, o, dim = f["features"].shape
        with FeatureStoreWriter(output, n, o, dim) as writer:
            for start in range(0, n, _CHUNK):
                counts = f["num_boxes"][start : start + _CHUNK]
                real = np.arange(o)[None, :, None] < counts[:, None, None]
                feats = (f["features"][start : start + _CHUNK].astype(np.float64) - mean) / std
                ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s)
                       for s in f["image_ids"][start : start + _CHUNK]]
                writer.add_batch(ids, features=np.where(real, feats, 0.0).astype(np.float32),
                                 **{k: f[k][start : start + _CHUNK] for k in _COPIED})
    return mean, std


def save_statistics(path: Path, mean: np.ndarray, std: np.ndarray) -> None:
    """Keep the statistics beside the store (to standardise new images the same way)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, mean=mean.astype(np.float32), std=std.astype(np.float32))
    os.replace(tmp, path)
