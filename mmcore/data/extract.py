"""Raw images → feature store: the extractor contract and the loop behind ``mmcore data extract``.

An extractor plugin registers ``registry.add_extractor(name, ExtractorClass, defaults=ExtractorClass.defaults)``.
The class is built with the user's options (already checked against ``defaults``) and turns batches of decoded
RGB images into :class:`Regions`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from mmcore.data.fileio import write_lines
from mmcore.data.images import ImageReadError, image_decoder, list_images
from mmcore.data.store import FeatureStoreWriter
from mmcore.errors import MMCoreError

__all__ = ["Regions", "Extractor", "ExtractResult", "parse_options", "build_extractor", "extract_folder"]


@dataclass
class Regions:
    """One image's regions: ``features`` [n,F], ``boxes`` [n,4] (x1,y1,x2,y2 / (w,h,w,h)), optional labels.

    Labels left as None are written as the store's "no label": id 0 with confidence 0, which the
    confidence-weighted losses (MOC) ignore.
    """

    features: np.ndarray
    boxes: np.ndarray
    obj_ids: np.ndarray | None = None
    obj_conf: np.ndarray | None = None
    attr_ids: np.ndarray | None = None
    attr_conf: np.ndarray | None = None

    def labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(obj_ids, obj_conf, attr_ids, attr_conf), zeros where not given."""
        n = len(self.features)
        ids, conf = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float32)
        return (ids if self.obj_ids is None else self.obj_ids, conf if self.obj_conf is None else self.obj_conf,
                ids if self.attr_ids is None else self.attr_ids, conf if self.attr_conf is None else self.attr_conf)


class Extractor:
    """Turns RGB uint8 images [H,W,3] into regions. Subclasses set ``name``, ``defaults`` and, once built,
    ``feature_dim`` and ``max_boxes``; ``vocabularies()`` names the label ids they write."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    feature_dim: int = 0
    max_boxes: int = 0

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = {**self.defaults, **options}

    def extract(self, images: Sequence[np.ndarray]) -> list[Regions]:
        """The regions of each image, in order."""
        raise NotImplementedError

    def vocabularies(self) -> dict[str, list[str]]:
        """Label names by kind (``objects``, ``attributes``): index = the id written to the store."""
        return {}


def parse_options(items: Sequence[str], defaults: dict[str, Any], extractor: str) -> dict[str, Any]:
    """``k=v`` strings (values parsed as YAML) checked against the extractor's ``defaults`` by name and type."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise MMCoreError(f"--option {item!r}: write it as KEY=VALUE, e.g. --option grid_size=6")
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "(none)"
            raise MMCoreError(f"extractor {extractor!r} has no option {key!r}; its options: {known}")
        value = yaml.safe_load(text) if text else ""
        default = defaults[key]
        if default is not None and not _same_kind(value, default):
            raise MMCoreError(f"extractor {extractor!r}: option {key} must be {_KINDS.get(type(default), 'a value')} "
                              f"(default {default!r}), got {value!r}")
        options[key] = float(value) if isinstance(default, float) else value
    return options


def build_extractor(name: str, items: Sequence[str] = ()) -> Extractor:
    """The registered extractor ``name`` built with ``KEY=VALUE`` options, checked as :func:`parse_options` does."""
    from mmcore.plugins import load_plugins  # loading every plugin is needed only once an extractor is asked for

    entry = load_plugins().registry.get("extractor", name)
    extractor: Extractor = entry.factory(parse_options(items, entry.defaults, name))
    return extractor


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
          dict: "a mapping"}


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, str):
        return isinstance(value, (str, int, float))  # a path or name that YAML happened to read as a number
    return isinstance(value, type(default))


@dataclass
class ExtractResult:
    """What one extraction wrote."""

    path: Path
    images: int
    skipped: list[tuple[Path, str]]
    feature_dim: int
    max_boxes: int
    seconds: float
    vocabularies: dict[str, Path] = field(default_factory=dict)
    decoder: str = ""

    @property
    def images_per_second(self) -> float:
        """Written images per wall-clock second."""
        return self.images / max(self.seconds, 1e-9)


def vocabulary_path(store: Path, kind: str) -> Path:
    """Where a store's label names are written: ``images.h5`` → ``images.objects_vocab.txt``."""
    return store.with_name(f"{store.stem}.{kind}_vocab.txt")


def extract_folder(folder: Path, output: Path, extractor: Extractor, *, batch_size: int = 8, skip_bad: bool = False,
                   overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> ExtractResult:
    """Extract every image of ``folder`` into the feature store ``output``, written atomically.

    An unreadable image is an error naming it (nothing is written) or, with ``skip_bad``, counted and left out.
    ``progress(images_done, skipped)`` is called after each batch.
    """
    if output.exists() and not overwrite:
        raise MMCoreError(f"{output} already exists; pass --overwrite to replace it")
    images = list_images(folder)
    library, decode = image_decoder()
    # Rows are declared up front, but --skip-bad learns the count only at the end: write everything (skipped
    # images as empty rows) to a spool, then copy the kept rows out only if something was skipped.
    spool, kept_path = output.with_name(output.name + ".partial"), output.with_name(output.name + ".kept")
    start = time.perf_counter()
    skipped: list[tuple[Path, str]] = []
    try:
        with FeatureStoreWriter(spool, len(images), extractor.max_boxes, extractor.feature_dim) as writer:
            for begin in range(0, len(images), batch_size):
                batch = images[begin : begin + batch_size]
                decoded: list[tuple[str, np.ndarray | None]] = []
                for img_id, path in batch:
                    try:
                        decoded.append((img_id, decode(path)))
                    except ImageReadError as exc:
                        if not skip_bad:
                            raise MMCoreError(f"{exc}; nothing was written (pass --skip-bad to skip unreadable "
                                              "images)") from None
                        skipped.append((path, exc.reason))
                        decoded.append((img_id, None))
                good = [array for _, array in decoded if array is not None]
                found = extractor.extract(good) if good else []
                if len(found) != len(good):
                    raise MMCoreError(f"extractor {extractor.name!r} returned {len(found)} results for {len(good)} "
                                      "images")
                regions = iter(found)
                for img_id, array in decoded:
                    _add(writer, img_id, None if array is None else next(regions), extractor)
                if progress is not None:
                    progress(begin + len(batch), len(skipped))
        if len(skipped) == len(images):
            raise MMCoreError(f"{folder}: none of the {len(images)} images could be read; nothing was written")
        if skipped:
            _compact(spool, kept_path, {p.stem for p, _ in skipped}, len(images) - len(skipped), extractor)
        finished = kept_path if skipped else spool
        _set_provenance(finished, extractor)
        os.replace(finished, output)
    finally:
        spool.unlink(missing_ok=True)
        kept_path.unlink(missing_ok=True)
    vocabularies = {}
    for kind, names in extractor.vocabularies().items():
        vocabularies[kind] = vocabulary_path(output, kind)
        write_lines(vocabularies[kind], names)
    return ExtractResult(output, len(images) - len(skipped), skipped, extractor.feature_dim, extractor.max_boxes,
                         time.perf_counter() - start, vocabularies, library)


def _add(writer: FeatureStoreWriter, img_id: str, regions: Regions | None, extractor: Extractor) -> None:
    if regions is None:  # a skipped image's placeholder row; _compact leaves it out
        f = extractor.feature_dim
        empty = np.zeros(0, dtype=np.float32)
        writer.add(img_id, np.zeros((0, f), np.float32), np.zeros((0, 4), np.float32), empty.astype(np.int64), empty,
                   empty.astype(np.int64), empty)
        return
    features = np.asarray(regions.features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != extractor.feature_dim:
        raise MMCoreError(f"extractor {extractor.name!r} returned features of shape {features.shape} for image "
                          f"{img_id!r}; expected (regions, {extractor.feature_dim})")
    writer.add(img_id, features, np.asarray(regions.boxes, dtype=np.float32), *regions.labels())


def _set_provenance(path: Path, extractor: Extractor) -> None:
    """Record which extractor and options made the store (readers ignore unknown attributes)."""
    with h5py.File(path, "r+") as f:
        f.attrs["extractor"] = extractor.name
        f.attrs["extractor_options"] = json.dumps(extractor.options, sort_keys=True, default=str)


def _compact(spool: Path, output: Path, drop: set[str], kept: int, extractor: Extractor) -> None:
    """Copy the rows of ``spool`` whose image id is not in ``drop`` into a store at ``output``."""
    names = ("features", "boxes", "num_boxes", "obj_ids", "obj_conf", "attr_ids", "attr_conf")
    with h5py.File(spool, "r") as src, FeatureStoreWriter(output, kept, extractor.max_boxes,
                                                         extractor.feature_dim) as writer:
        ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in src["image_ids"][:]]
        step = 64
        for begin in range(0, len(ids), step):
            rows = [i for i in range(begin, min(begin + step, len(ids))) if ids[i] not in drop]
            if rows:
                arrays = {name: src[name][rows[0] : rows[-1] + 1][np.array(rows) - rows[0]] for name in names}
                writer.add_batch([ids[i] for i in rows], **arrays)
