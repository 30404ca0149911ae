"""The HDF5 feature store: detector region features, boxes and labels of many images in one file.

Layout (``format_version`` 1), for N images of at most O regions with F-dim features:

=============  ========  ===========  ==============================================================
dataset        shape     dtype        meaning
=============  ========  ===========  ==============================================================
image_ids      (N,)      utf-8 str    image id, unique
features       (N,O,F)   float16      region features, chunked one image per chunk (1,O,F)
boxes          (N,O,4)   float32      x1,y1,x2,y2 normalised by image width/height to [0,1]
num_boxes      (N,)      int32        real regions of each image; rows past it are zero padding
obj_ids        (N,O)     int64        detector object label (index into the objects vocabulary)
obj_conf       (N,O)     float32      its confidence
attr_ids       (N,O)     int64        detector attribute label (index into the attributes vocabulary)
attr_conf      (N,O)     float32      its confidence
=============  ========  ===========  ==============================================================

File attributes: ``feature_dim`` (F), ``max_boxes`` (O), ``format_version`` (1). Padding rows hold label 0
with confidence 0, so a confidence-weighted loss ignores them even where ``visual_mask`` is not consulted.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from mmcore.api import Example
from mmcore.data.devicecache import DeviceTable, image_refs
from mmcore.data.fileio import temp_path
from mmcore.errors import DataError, MMCoreError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FeatureStore", "FeatureStoreWriter", "write_feature_store", "CACHE_MODES", "FORMAT_VERSION"]

FORMAT_VERSION = 1
# Where a store's visual fields live while training: read per example from the file, held in host memory, or
# held as device tensors and gathered per batch on the device (see mmcore.data.devicecache).
CACHE_MODES = ("disk", "ram", "gpu")
_PER_REGION = {"obj_ids": np.int64, "obj_conf": np.float32, "attr_ids": np.int64, "attr_conf": np.float32}
# Slack for float rounding in converters that divide pixel boxes by the image size.
_BOX_TOLERANCE = 1e-3
# Stores holding an open file handle, so that a forked process can close the handles it inherited.
_OPEN: weakref.WeakSet[FeatureStore] = weakref.WeakSet()


class FeatureStoreWriter:
    """Writes a feature store of exactly ``num_images`` images to ``<path>.tmp``, renamed to ``path`` on close.

    Use as a context manager; an exception (or too few images) leaves no file at ``path``.
    """

    def __init__(self, path: str | os.PathLike[str], num_images: int, max_boxes: int, feature_dim: int) -> None:
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.num_images, self.max_boxes, self.feature_dim = int(num_images), int(max_boxes), int(feature_dim)
        if min(self.num_images, self.max_boxes, self.feature_dim) < 1:
            raise DataError(f"{self.path}: a feature store needs at least one image, box and feature dimension; "
                            f"got {self.num_images} images, max_boxes={self.max_boxes}, "
                            f"feature_dim={self.feature_dim}")
        self._count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.unlink(missing_ok=True)
        n, o, f = self.num_images, self.max_boxes, self.feature_dim
        self._file = h5py.File(self.tmp, "w")
        self._file.attrs.update({"feature_dim": f, "max_boxes": o, "format_version": FORMAT_VERSION})
        self._file.create_dataset("image_ids", (n,), dtype=h5py.string_dtype("utf-8"))
        self._file.create_dataset("features", (n, o, f), dtype=np.float16, chunks=(1, o, f) if n else None)
        self._file.create_dataset("boxes", (n, o, 4), dtype=np.float32)
        self._file.create_dataset("num_boxes", (n,), dtype=np.int32)
        for name, dtype in _PER_REGION.items():
            self._file.create_dataset(name, (n, o), dtype=dtype)

    def add(self, img_id: str, features: np.ndarray, boxes: np.ndarray, obj_ids: np.ndarray,
            obj_conf: np.ndarray, attr_ids: np.ndarray, attr_conf: np.ndarray) -> None:
        """Append one image of ``n <= max_boxes`` regions (arrays of leading size n); the rest is padded."""
        n = len(features)
        if n > self.max_boxes:
            raise DataError(f"{self.path}: image {img_id!r} has {n} regions, more than max_boxes={self.max_boxes}")
        per_region = {"features": features, "boxes": boxes, "obj_ids": obj_ids, "obj_conf": obj_conf,
                      "attr_ids": attr_ids, "attr_conf": attr_conf}
        padded: dict[str, np.ndarray] = {}
        for name, value in per_region.items():
            value = np.asarray(value)
            if len(value) != n:
                raise DataError(f"{self.path}: image {img_id!r}: {name} has {len(value)} rows, features has {n}")
            out = np.zeros((self.max_boxes, *value.shape[1:]), dtype=value.dtype)
            out[:n] = value
            padded[name] = out[None]
        self.add_batch([img_id], num_boxes=np.array([n]), **padded)

    def add_batch(self, image_ids: list[str], features: np.ndarray, boxes: np.ndarray, num_boxes: np.ndarray,
                  obj_ids: np.ndarray, obj_conf: np.ndarray, attr_ids: np.ndarray, attr_conf: np.ndarray) -> None:
        """Append already padded images: arrays of shape (k,O,F), (k,O,4), (k,), and (k,O) for the labels."""
        k, o, f = len(image_ids), self.max_boxes, self.feature_dim
        start = self._count
        if start + k > self.num_images:
            raise DataError(f"{self.path}: writing more than the declared {self.num_images} images")
        expected = {"features": (k, o, f), "boxes": (k, o, 4), "num_boxes": (k,), "obj_ids": (k, o),
                    "obj_conf": (k, o), "attr_ids": (k, o), "attr_conf": (k, o)}
        arrays = {"features": features, "boxes": boxes, "num_boxes": num_boxes, "obj_ids": obj_ids,
                  "obj_conf": obj_conf, "attr_ids": attr_ids, "attr_conf": attr_conf}
        for name, shape in expected.items():
            got = np.shape(arrays[name])
            if got != shape:
                raise DataError(f"{self.path}: dataset {name!r} expects shape {shape} for this batch, got {got}")
        for name in ("features", "boxes", "obj_conf", "attr_conf") if k else ():
            rows = np.flatnonzero(~np.isfinite(np.asarray(arrays[name], dtype=np.float32)).reshape(k, -1).all(1))
            if len(rows):
                raise DataError(f"{self.path}: {name} of image {image_ids[rows[0]]!r} hold NaN or inf; "
                                "nothing saved")
        boxes = np.asarray(boxes, dtype=np.float32)
        if k and (boxes.min() < -_BOX_TOLERANCE or boxes.max() > 1 + _BOX_TOLERANCE):
            raise DataError(f"{self.path}: boxes must be normalised to [0,1] (x1,y1,x2,y2 / (w,h,w,h)); "
                            f"got values in [{boxes.min():.3f}, {boxes.max():.3f}]")
        nb = np.asarray(num_boxes)
        if k and (nb.min() < 0 or nb.max() > o):
            raise DataError(f"{self.path}: num_boxes must lie in [0, {o}]")
        sl = slice(start, start + k)
        self._file["image_ids"][sl] = list(image_ids)
        self._file["features"][sl] = np.asarray(features, dtype=np.float16)
        self._file["boxes"][sl] = np.clip(boxes, 0.0, 1.0)
        self._file["num_boxes"][sl] = nb.astype(np.int32)
        for name, dtype in _PER_REGION.items():
            self._file[name][sl] = np.asarray(arrays[name], dtype=dtype)
        self._count += k

    def close(self) -> Path:
        """Check every image was written, then rename the temporary file into place."""
        self._file.close()
        if self._count != self.num_images:
            self.tmp.unlink(missing_ok=True)
            raise DataError(f"{self.path}: {self._count} images written, {self.num_images} declared; nothing saved")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard the partial file."""
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_feature_store(path: str | os.PathLike[str], image_ids: list[str], features: np.ndarray,
                        boxes: np.ndarray, num_boxes: np.ndarray, obj_ids: np.ndarray, obj_conf: np.ndarray,
                        attr_ids: np.ndarray, attr_conf: np.ndarray) -> Path:
    """Write a whole store from padded arrays (shapes as in the module docstring) in one go."""
    n, o, f = np.shape(features)
    with FeatureStoreWriter(path, n, o, f) as writer:
        writer.add_batch(image_ids, features, boxes, num_boxes, obj_ids, obj_conf, attr_ids, attr_conf)
    return Path(path)


class FeatureStore:
    """Reads a feature store; ``image(img_id)`` gives the visual fields of one example.

    ``cache`` (one of :data:`CACHE_MODES`; default from ``in_memory``): ``ram`` loads every dataset at once
    (features stay float16 until an image is read); ``disk`` opens the file lazily in each process, so the store
    can be handed to data-loader workers; ``gpu`` loads like ``ram`` and ``image`` returns row references that
    :func:`mmcore.data.collate.to_device` gathers on the device.
    """

    def __init__(self, path: str | os.PathLike[str], in_memory: bool = True, cache: str | None = None) -> None:
        self.path = Path(path)
        cache = cache if cache is not None else ("ram" if in_memory else "disk")
        if cache not in CACHE_MODES:
            raise MMCoreError(f"{self.path}: features cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        self.cache = cache
        self.in_memory = in_memory = cache != "disk"
        self._table: DeviceTable | None = None
        if not self.path.is_file():
            raise DataError(f"feature store {self.path} does not exist")
        self._handle: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}  # of the open handle: looking one up costs as much as a read
        self._pid = -1
        self._arrays: dict[str, np.ndarray] = {}
        try:
            with h5py.File(self.path, "r") as f:
                self.feature_dim, self.max_boxes = self._check(f)
                self._ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in f["image_ids"][:]]
                self._num_boxes = f["num_boxes"][:].astype(np.int64)
                if in_memory:
                    for name in ("features", "boxes", *_PER_REGION):
                        self._arrays[name] = f[name][:]
        except OSError as exc:
            raise self._unreadable(exc) from None
        if in_memory:
            for name in ("features", "boxes", "obj_conf", "attr_conf"):
                self._check_finite(name, self._arrays[name], 0)
        self._index = {img_id: i for i, img_id in enumerate(self._ids)}
        if len(self._index) != len(self._ids):
            raise DataError(f"{self.path}: dataset 'image_ids' holds duplicate ids")
        if cache == "gpu":
            self._table = DeviceTable(self._arrays, self._num_boxes, str(self.path))

    def _unreadable(self, exc: OSError) -> DataError:
        detail = str(exc).split("(")[-1].rstrip(")") if "(" in str(exc) else str(exc)
        return DataError(f"{self.path}: cannot read the feature store; not an HDF5 file, or it is truncated or "
                         f"damaged ({detail})")

    def _check_finite(self, name: str, rows: np.ndarray, offset: int) -> None:
        # A NaN feature turns every loss of its batch into NaN; name the image instead of the training step.
        step = max(1, (1 << 22) // max(1, rows[0].size if len(rows) else 1))  # ~4M values at a time
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            bad = np.flatnonzero(~np.isfinite(chunk.reshape(len(chunk), -1)).all(1))
            if len(bad):
                row = offset + start + int(bad[0])
                raise DataError(f"{self.path}: dataset {name!r} holds NaN or inf for image {self._ids[row]!r} "
                                f"(row {row})")

    def _check(self, f: h5py.File) -> tuple[int, int]:
        for key in ("feature_dim", "max_boxes", "format_version"):
            if key not in f.attrs:
                raise DataError(f"{self.path}: missing file attribute {key!r}; not an mmcore feature store")
        if int(f.attrs["format_version"]) != FORMAT_VERSION:
            raise DataError(f"{self.path}: format_version {int(f.attrs['format_version'])} is not supported "
                            f"(this mmcore reads version {FORMAT_VERSION})")
        dim, boxes = int(f.attrs["feature_dim"]), int(f.attrs["max_boxes"])
        missing = [name for name in ("image_ids", "num_boxes", "features", "boxes", *_PER_REGION) if name not in f]
        if missing:
            raise DataError(f"{self.path}: missing dataset(s) {', '.join(repr(m) for m in missing)}")
        n = f["image_ids"].shape[0] if f["image_ids"].ndim else 0
        if n == 0:
            raise DataError(f"{self.path}: the feature store holds no images")
        shapes = {"image_ids": (n,), "num_boxes": (n,), "features": (n, boxes, dim), "boxes": (n, boxes, 4),
                  **{name: (n, boxes) for name in _PER_REGION}}
        for name, shape in shapes.items():
            if f[name].shape != shape:
                raise DataError(f"{self.path}: dataset {name!r} has shape {f[name].shape}, expected {shape} "
                                f"(N={n}, max_boxes={boxes}, feature_dim={dim})")
        return dim, boxes

    def _file(self) -> h5py.File:
        # h5py handles must not cross a fork, so each process opens its own.
        if self._handle is not None and self._pid != os.getpid():
            self.close()  # inherited through a fork: this process's copy of it goes, the parent's stays open
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
            _OPEN.add(self)
        return self._handle

    def _rows(self, name: str, index: int | slice) -> np.ndarray:
        if self.in_memory:
            return self._arrays[name][index]
        try:
            handle = self._file()
            dataset = self._datasets.get(name)
            if dataset is None:
                dataset = self._datasets[name] = handle[name]
            rows = dataset[index]
        except OSError as exc:
            raise self._unreadable(exc) from None
        if name in ("features", "boxes", "obj_conf", "attr_conf"):
            self._check_finite(name, rows[None] if isinstance(index, int) else rows,
                               index if isinstance(index, int) else index.start or 0)
        return rows

    def ids(self) -> list[str]:
        """Every image id, in file order."""
        return list(self._ids)

    def index(self, img_id: str) -> int:
        """Row of ``img_id`` in the file."""
        try:
            return self._index[img_id]
        except KeyError:
            raise DataError(f"{self.path}: image {img_id!r} is not in the feature store") from None

    def num_boxes(self, img_id: str) -> int:
        """Real regions of one image."""
        return int(self._num_boxes[self.index(img_id)])

    def image(self, img_id: str) -> Example:
        """The visual fields of one image: fresh float32/int64 arrays of ``max_boxes`` rows and the id (with the
        ``gpu`` cache: row references, resolved when the batch moves to its device)."""
        i = self.index(img_id)
        if self._table is not None:
            return {"img_id": img_id, **image_refs(self._table, i)}
        mask = np.zeros(self.max_boxes, dtype=np.int64)
        mask[: self._num_boxes[i]] = 1
        return {
            "img_id": img_id,
            "visual_feats": self._rows("features", i).astype(np.float32),
            "visual_pos": np.array(self._rows("boxes", i), dtype=np.float32),
            "visual_mask": mask,
            "obj_labels": np.array(self._rows("obj_ids", i), dtype=np.int64),
            "obj_conf": np.array(self._rows("obj_conf", i), dtype=np.float32),
            "attr_labels": np.array(self._rows("attr_ids", i), dtype=np.int64),
            "attr_conf": np.array(self._rows("attr_conf", i), dtype=np.float32),
        }

    def labels(self, img_id: str) -> np.ndarray:
        """The detector object labels of the real regions of one image, in region order."""
        i = self.index(img_id)
        return np.array(self._rows("obj_ids", i)[: self._num_boxes[i]], dtype=np.int64)

    def mean_pooled(self, chunk: int = 256) -> np.ndarray:
        """Mean of each image's real region features, float32 [N,F], in file order (for hard negatives)."""
        out = np.zeros((len(self._ids), self.feature_dim), dtype=np.float32)
        for start in range(0, len(self._ids), chunk):
            feats = self._rows("features", slice(start, start + chunk)).astype(np.float32)
            counts = self._num_boxes[start : start + chunk]
            real = np.arange(self.max_boxes)[None, :] < counts[:, None]
            out[start : start + len(feats)] = (feats * real[..., None]).sum(1) / np.maximum(counts, 1)[:, None]
        return out

    def close(self) -> None:
        """Close the lazily opened file handle, if any."""
        if self._handle is not None:
            self._datasets = {}
            self._handle.close()
            self._handle = None
            _OPEN.discard(self)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, img_id: object) -> bool:
        return img_id in self._index

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"], state["_pid"], state["_datasets"] = None, -1, {}
        return state


def close_open_stores(inherited_only: bool = False) -> int:
    """Close the file handles of every store read from disk (with ``inherited_only``: those opened by another
    process, i.e. inherited through a fork); each reopens lazily in the process that next reads it.

    Call it before forking workers and first thing in each worker, so that no HDF5 handle is shared across a
    fork. Returns how many were closed.
    """
    pid, closed = os.getpid(), 0
    for store in list(_OPEN):
        if store._handle is not None and not (inherited_only and store._pid == pid):
            store.close()
            closed += 1
    return closed
