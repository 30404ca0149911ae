"""Bottom-up-attention TSV region features (the files LXMERT ships) → mmcore's HDF5 feature store, streaming.

A TSV line is one image: ``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes,
boxes, features``, tab-separated, no header. The six array fields are base64 of raw little-endian numpy bytes:
int64 (N,), float32 (N,), int64 (N,), float32 (N,), float32 (N,4) pixel boxes x1,y1,x2,y2, float32 (N,F).

Lines are read one at a time and split on tabs directly: no field holds a tab or a quote, so csv adds nothing
but its 128 KiB field-size limit, which a 2048-d feature field (≈400 KB of base64) exceeds and LXMERT's own
loader has to raise. Memory does not grow with the file: one write batch of images is buffered (beside one
id and region count per image, kept to catch duplicates and for ``verify``).
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mmcore.data.fileio import temp_path
from mmcore.data.store import FORMAT_VERSION, FeatureStore
from mmcore.errors import DataError, MMCoreError

TSV_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
              "boxes", "features")
# Explicit little-endian dtypes: the released files were written on x86.
_ARRAYS = {"objects_id": ("<i8", 1), "objects_conf": ("<f4", 1), "attrs_id": ("<i8", 1),
           "attrs_conf": ("<f4", 1), "boxes": ("<f4", 4)}
_STORE_NAMES = {"objects_id": "obj_ids", "objects_conf": "obj_conf", "attrs_id": "attr_ids",
                "attrs_conf": "attr_conf"}
_LABEL_DTYPES = {"obj_ids": np.int64, "obj_conf": np.float32, "attr_ids": np.int64, "attr_conf": np.float32}
# Detector boxes are clipped to the image; this slack absorbs float rounding only (LXMERT asserts 1e-5).
_BOX_TOLERANCE = 1e-3
WRITE_BATCH = 32
FEATURE_DTYPES = ("float16", "float32")

Progress = Callable[[int, int], None]  # (bytes read so far over all inputs, images converted so far)


class TSVFormatError(DataError):
    """A malformed TSV line; the message names the file and the line."""


@dataclass
class TSVImage:
    """One parsed TSV line: boxes already normalised to [0,1], arrays of leading size ``num_boxes``."""

    img_id: str
    height: int
    width: int
    obj_ids: np.ndarray
    obj_conf: np.ndarray
    attr_ids: np.ndarray
    attr_conf: np.ndarray
    boxes: np.ndarray
    features: np.ndarray

    @property
    def num_boxes(self) -> int:
        """Regions of this image."""
        return len(self.features)


def encode_tsv_line(img_id: str, height: int, width: int, obj_ids: np.ndarray, obj_conf: np.ndarray,
                    attr_ids: np.ndarray, attr_conf: np.ndarray, boxes: np.ndarray, features: np.ndarray) -> str:
    """One TSV line (with its newline) in the released format; ``boxes`` in pixels."""
    def b64(array: np.ndarray, dtype: str) -> str:
        return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")

    fields = [img_id, str(int(height)), str(int(width)), b64(obj_ids, "<i8"), b64(obj_conf, "<f4"),
              b64(attr_ids, "<i8"), b64(attr_conf, "<f4"), str(len(features)), b64(boxes, "<f4"),
              b64(features, "<f4")]
    return "\t".join(fields) + "\n"


def parse_tsv_line(line: bytes, where: str, feature_dim: int | None = None) -> TSVImage:
    """Parse one line; ``where`` (``file:line``) prefixes every error. ``feature_dim`` None infers F."""
    fields = line.rstrip(b"\r\n").split(b"\t")
    if len(fields) != len(TSV_FIELDS):
        missing = ", ".join(TSV_FIELDS[len(fields):]) if len(fields) < len(TSV_FIELDS) else ""
        detail = f"missing {missing}; a truncated or cut line?" if missing else "too many tab-separated fields"
        raise TSVFormatError(f"{where}: {len(fields)} fields, expected {len(TSV_FIELDS)} "
                             f"({', '.join(TSV_FIELDS)}): {detail}")
    raw = dict(zip(TSV_FIELDS, fields))
    try:
        img_id = raw["img_id"].decode("utf-8")
    except UnicodeDecodeError:
        raise TSVFormatError(f"{where}: img_id is not UTF-8 text") from None
    if not img_id:
        raise TSVFormatError(f"{where}: img_id is empty")
    where = f"{where} (image {img_id!r})"
    height, width, n = (_positive_int(raw[k], k, where) for k in ("img_h", "img_w", "num_boxes"))
    arrays = {}
    for name, (dtype, per_box) in _ARRAYS.items():
        arrays[name] = _decode(raw[name], name, where, dtype, n, per_box)
    features = _decode(raw["features"], "features", where, "<f4", n, feature_dim)
    if not np.isfinite(features).all():
        raise TSVFormatError(f"{where}: features hold NaN or infinite values")
    scale = np.array([width, height, width, height], dtype=np.float32)
    boxes = arrays["boxes"] / scale
    if boxes.min() < -_BOX_TOLERANCE or boxes.max() > 1 + _BOX_TOLERANCE or not np.isfinite(boxes).all():
        raise TSVFormatError(f"{where}: boxes fall outside the {width}×{height} image (normalised range "
                             f"[{boxes.min():.4f}, {boxes.max():.4f}]); are img_h and img_w swapped?")
    return TSVImage(img_id, height, width, arrays["objects_id"], arrays["objects_conf"], arrays["attrs_id"],
                    arrays["attrs_conf"], np.clip(boxes, 0.0, 1.0), features)


def _positive_int(value: bytes, name: str, where: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise TSVFormatError(f"{where}: {name} is not an integer: {value[:40]!r}") from None
    if number < 1:
        raise TSVFormatError(f"{where}: {name} must be positive, got {number}")
    return number


def _decode(value: bytes, name: str, where: str, dtype: str, n: int, per_box: int | None) -> np.ndarray:
    """Decode a base64 field and check it holds exactly ``n × per_box`` values (``per_box`` None: inferred)."""
    try:
        data = base64.b64decode(value)
    except (binascii.Error, ValueError) as exc:
        raise TSVFormatError(f"{where}: field {name} is not valid base64 ({exc}); a truncated line?") from None
    itemsize = np.dtype(dtype).itemsize
    if per_box is None:  # the feature width of the first image
        if len(data) == 0 or len(data) % (n * itemsize):
            raise TSVFormatError(f"{where}: field {name} decodes to {len(data)} bytes, not num_boxes={n} rows "
                                 f"of {itemsize}-byte values")
        per_box = len(data) // (n * itemsize)
    if len(data) != n * per_box * itemsize:
        raise TSVFormatError(f"{where}: field {name} decodes to {len(data)} bytes, expected num_boxes {n} × "
                             f"{per_box} × {itemsize} = {n * per_box * itemsize}; a truncated line, or a "
                             "num_boxes that does not match the arrays?")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(n, per_box) if per_box > 1 or name == "features" else array


def iter_tsv(path: str | os.PathLike[str], feature_dim: int | None = None) -> Iterator[tuple[int, int, TSVImage]]:
    """``(line number, bytes read so far, image)`` for each non-blank line of one TSV file, streaming.

    The feature width is inferred from the first image unless ``feature_dim`` is given; every later image must
    match it.
    """
    path = Path(path)
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            image = parse_tsv_line(line, f"{path}:{line_no}", feature_dim)
            feature_dim = image.features.shape[1]
            yield line_no, f.tell(), image


class _GrowingStore:
    """The feature-store layout of :mod:`mmcore.data.store` in resizable HDF5 datasets, appended batch by batch.

    The region axis starts at ``max_boxes`` and grows if a later image has more regions (old rows stay zero
    padding, which is the store's padding convention).
    """

    def __init__(self, path: Path, max_boxes: int, feature_dim: int, dtype: str) -> None:
        self.max_boxes, self.feature_dim, self.dtype = max_boxes, feature_dim, np.dtype(dtype)
        self.count = 0
        self._pending: list[tuple[TSVImage, str]] = []  # (image, where it was read)
        self.file = h5py.File(path, "w")
        o, f = max_boxes, feature_dim
        self.file.attrs.update({"feature_dim": f, "max_boxes": o, "format_version": FORMAT_VERSION})
        make = self.file.create_dataset
        make("image_ids", (0,), maxshape=(None,), chunks=(4096,), dtype=h5py.string_dtype("utf-8"))
        make("num_boxes", (0,), maxshape=(None,), chunks=(4096,), dtype=np.int32)
        # One image per chunk: a training batch reads scattered images, each in one piece.
        make("features", (0, o, f), maxshape=(None, None, f), chunks=(1, o, f), dtype=self.dtype)
        make("boxes", (0, o, 4), maxshape=(None, None, 4), chunks=(256, o, 4), dtype=np.float32)
        for name, label_dtype in _LABEL_DTYPES.items():
            make(name, (0, o), maxshape=(None, None), chunks=(1024, o), dtype=label_dtype)

    def add(self, image: TSVImage, where: str) -> None:
        """Queue one image; written every :data:`WRITE_BATCH` images."""
        if image.num_boxes > self.max_boxes:
            self._grow(image.num_boxes)
        self._pending.append((image, where))
        if len(self._pending) >= WRITE_BATCH:
            self.flush()

    def _grow(self, max_boxes: int) -> None:
        for name in ("features", "boxes", *_LABEL_DTYPES):
            shape = list(self.file[name].shape)
            shape[1] = max_boxes
            self.file[name].resize(tuple(shape))
        self.max_boxes = max_boxes
        self.file.attrs["max_boxes"] = max_boxes

    def flush(self) -> None:
        """Write the queued images."""
        if not self._pending:
            return
        k, o = len(self._pending), self.max_boxes
        feats = np.zeros((k, o, self.feature_dim), dtype=self.dtype)
        boxes = np.zeros((k, o, 4), dtype=np.float32)
        labels = {name: np.zeros((k, o), dtype=dtype) for name, dtype in _LABEL_DTYPES.items()}
        for i, (image, _) in enumerate(self._pending):
            n = image.num_boxes
            with np.errstate(over="ignore"):  # float16 overflow is reported below, with the line
                feats[i, :n] = image.features
            boxes[i, :n] = image.boxes
            for name, value in (("obj_ids", image.obj_ids), ("obj_conf", image.obj_conf),
                                ("attr_ids", image.attr_ids), ("attr_conf", image.attr_conf)):
                labels[name][i, :n] = value
        if self.dtype == np.float16 and np.isinf(feats).any():
            i = int(np.flatnonzero(np.isinf(feats).any(axis=(1, 2)))[0])
            image, where = self._pending[i]
            raise TSVFormatError(f"{where} (image {image.img_id!r}): feature values beyond float16's range "
                                 "(±65504); convert with --dtype float32")
        sl = slice(self.count, self.count + k)
        for name in ("image_ids", "num_boxes", "features", "boxes", *_LABEL_DTYPES):
            self.file[name].resize(self.count + k, axis=0)
        self.file["image_ids"][sl] = [image.img_id for image, _ in self._pending]
        self.file["num_boxes"][sl] = [image.num_boxes for image, _ in self._pending]
        self.file["features"][sl] = feats
        self.file["boxes"][sl] = boxes
        for name, value in labels.items():
            self.file[name][sl] = value
        self.count += k
        self._pending.clear()

    def close(self) -> None:
        """Close the HDF5 file (pending images must have been flushed)."""
        self.file.close()


@dataclass
class ConversionResult:
    """What :func:`convert_tsv` wrote."""

    path: Path
    images: int
    max_boxes: int
    feature_dim: int
    dtype: str
    seconds: float
    per_file: dict[str, int]

    @property
    def images_per_second(self) -> float:
        """Conversion throughput."""
        return self.images / max(self.seconds, 1e-9)


def convert_tsv(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], dtype: str = "float16",
                feature_dim: int | None = None, max_boxes: int | None = None, verify: bool = False,
                overwrite: bool = False, progress: Progress | None = None) -> ConversionResult:
    """Convert one or more TSV files into one feature store at ``output``, in input order.

    The store is written as ``<output>.tmp`` and renamed only once complete (and verified, with ``verify``):
    any error or interruption leaves no store, and a leftover ``.tmp`` from a killed run is replaced.
    """
    if dtype not in FEATURE_DTYPES:
        raise MMCoreError(f"feature dtype must be one of {', '.join(FEATURE_DTYPES)}, got {dtype!r}")
    paths = [Path(p) for p in inputs]
    out = Path(output)
    _check_paths(paths, out, overwrite)
    tmp = temp_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    start, done_bytes = time.perf_counter(), 0
    seen: dict[str, str] = {}  # img_id -> where it was first read, for duplicate errors
    num_boxes: list[int] = []
    per_file: dict[str, int] = {}
    store: _GrowingStore | None = None
    try:
        for path in paths:
            count = 0
            for line_no, pos, image in iter_tsv(path, feature_dim):
                where = f"{path}:{line_no}"
                if image.img_id in seen:
                    raise TSVFormatError(f"{where}: image {image.img_id!r} was already read at {seen[image.img_id]}")
                seen[image.img_id] = where
                if store is None:
                    store = _GrowingStore(tmp, max(max_boxes or 0, image.num_boxes), image.features.shape[1], dtype)
                elif image.features.shape[1] != store.feature_dim:
                    raise TSVFormatError(f"{where} (image {image.img_id!r}): features are {image.features.shape[1]}"
                                         f"-d, earlier images {store.feature_dim}-d")
                store.add(image, where)
                feature_dim = store.feature_dim
                num_boxes.append(image.num_boxes)
                count += 1
                if progress is not None:
                    progress(done_bytes + pos, len(num_boxes))
            done_bytes += path.stat().st_size
            per_file[str(path)] = count
            if store is not None:
                store.flush()
        if store is None:
            raise DataError(f"no image found in {', '.join(map(str, paths))} (empty TSV files?)")
        store.close()
        if verify:
            verify_store(tmp, list(seen), np.array(num_boxes), shown_as=out)
        os.replace(tmp, out)
    except BaseException:
        if store is not None:
            store.file.close()
        tmp.unlink(missing_ok=True)
        raise
    return ConversionResult(out, len(num_boxes), store.max_boxes, store.feature_dim, dtype,
                            time.perf_counter() - start, per_file)


def _check_paths(paths: list[Path], out: Path, overwrite: bool) -> None:
    if not paths:
        raise MMCoreError("give at least one input TSV file")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MMCoreError(f"input TSV file(s) not found: {', '.join(missing)}")
    if any(p.resolve() == out.resolve() for p in paths):
        raise MMCoreError(f"the output {out} is also an input")
    if out.exists() and not overwrite:
        raise MMCoreError(f"{out} already exists; pass --overwrite to replace it")


def verify_store(path: Path, image_ids: list[str], num_boxes: np.ndarray, shown_as: Path | None = None,
                 chunk: int = 256) -> None:
    """Re-read a written store: shapes (via :class:`FeatureStore`), ids, region counts, finite features,
    zero padding and boxes in [0,1]; raise :class:`MMCoreError` on the first mismatch."""
    name = shown_as or path
    store = FeatureStore(path, in_memory=False)
    try:
        if store.ids() != image_ids:
            raise MMCoreError(f"verify {name}: {len(store)} image ids read back, {len(image_ids)} written, "
                              "or in another order")
        with h5py.File(path, "r") as f:
            if not np.array_equal(f["num_boxes"][:], num_boxes):
                raise MMCoreError(f"verify {name}: num_boxes read back differ from those converted")
            for begin in range(0, len(image_ids), chunk):
                feats = f["features"][begin : begin + chunk]
                boxes = f["boxes"][begin : begin + chunk]
                pad = np.arange(feats.shape[1])[None, :] >= num_boxes[begin : begin + chunk, None]
                if not np.isfinite(feats).all() or np.abs(feats[pad]).max(initial=0) != 0:
                    raise MMCoreError(f"verify {name}: images {begin}..{begin + len(feats) - 1} hold non-finite "
                                      "features or non-zero padding")
                if boxes.min(initial=0) < 0 or boxes.max(initial=0) > 1:
                    raise MMCoreError(f"verify {name}: images {begin}..{begin + len(feats) - 1} have boxes "
                                      "outside [0,1]")
    finally:
        store.close()
