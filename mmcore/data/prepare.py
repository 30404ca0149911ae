"""From a source folder (images + JSONL annotations, see :mod:`mmcore.data.userdata`) to a ready dataset directory.

The directory holds ``dataset.json`` (the manifest), ``features.h5`` (every annotated image), ``annotations.json``
(the records, normalised), ``vocab.txt`` (or ``tokenizer/``), ``answers_<kind>.json`` per question kind,
``hard_negatives.npz`` over the training images and, when the features carry detector labels,
``objects_vocab.txt`` / ``attributes_vocab.txt``.

It is built in ``<output>.partial/`` and renamed into place when complete. Extraction writes one shard per
``shard_size`` images, so an interrupted run resumes at the shard where it stopped (the partial folder remembers
the content hash of its inputs and starts afresh when they changed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmcore.data.annotations import read_vocab_txt
from mmcore.data.extract import Extractor, vocabulary_path
from mmcore.data.fileio import atomic_path, write_json, write_lines
from mmcore.data.hardneg import nearest_images_torch, save_hard_negatives
from mmcore.data.images import ImageReadError, image_decoder
from mmcore.data.standardise import STATS_FILE, save_statistics, standardise_store
from mmcore.data.store import FeatureStore, FeatureStoreWriter
from mmcore.data.tokenizer import build_wordpiece
from mmcore.data.userdata import IMAGES_DIR, Annotations, Record, list_image_files, read_source
from mmcore.errors import MMCoreError
from mmcore.hubcache import local_path, not_found_hint
from mmcore.progress import Reporter

__all__ = ["PrepareOptions", "prepare", "is_prepared", "read_manifest", "read_annotations", "content_hash",
    "answer_table", "MANIFEST"]

MANIFEST = "dataset.json"
FORMAT = "mmcore-prepared-dataset"
VERSION = 1
FEATURES = "features.h5"
ANNOTATIONS = "annotations.json"
HARD_NEGATIVES = "hard_negatives.npz"
QUESTION_KINDS = ("vqa", "gqa")
NORMALISATIONS = ("standardise", "none")


@dataclass
class PrepareOptions:
    """What shapes the prepared directory besides the source (all part of the content hash)."""

    extractor: Extractor | None = None  # needed when the source has images/
    features: Path | None = None  # an existing feature store instead of images/
    tokenizer: Path | None = None  # a local Hugging Face tokenizer directory instead of a built vocabulary
    vocab_size: int = 8000
    min_answer_count: int = 1
    hard_negatives_top: int = 100
    shard_size: int = 256
    normalise: str = "standardise"  # or "none": features as extracted or given (see mmcore.data.standardise)

    def key(self) -> dict[str, Any]:
        """The options as plain JSON (extractor by name and options, paths by content)."""
        return {"extractor": None if self.extractor is None else [self.extractor.name, self.extractor.options],
                "features": None if self.features is None else _file_digest(self.features),
                "tokenizer": None if self.tokenizer is None else _tree_digest(self.tokenizer),
                "vocab_size": self.vocab_size, "min_answer_count": self.min_answer_count,
                "hard_negatives_top": self.hard_negatives_top, "normalise": self.normalise}


def content_hash(source: Path, options: PrepareOptions) -> str:
    """sha256 over the bytes of every annotation file and image, and the options: equal inputs, equal hash."""
    digest = hashlib.sha256(json.dumps({"version": VERSION, **options.key()}, sort_keys=True, default=str).encode())
    for path in sorted(source.glob("*.jsonl")):
        digest.update(path.name.encode() + b"\0" + _file_digest(path).encode())
    images = source / IMAGES_DIR
    if images.is_dir() and options.features is None:
        digest.update(_tree_digest(images).encode())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + _file_digest(path).encode())
    return h.hexdigest()


def is_prepared(directory: Path) -> bool:
    """Whether ``directory`` is a finished prepared dataset."""
    return (directory / MANIFEST).is_file()


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a prepared dataset directory, checked for format and version."""
    path = directory / MANIFEST
    if not path.is_file():
        raise MMCoreError(f"{directory} is not a prepared dataset (no {MANIFEST}); make one with "
                          "`mmcore data prepare SOURCE OUTPUT`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise MMCoreError(f"{path}: not a version-{VERSION} {FORMAT} manifest")
    return manifest


def prepare(source: Path, output: Path, options: PrepareOptions, reporter: Reporter | None = None,
            overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Build the dataset directory ``output`` from ``source``; returns its manifest. Progress bars go to
    ``reporter``, else to standard error unless ``quiet``."""
    reporter = reporter if reporter is not None else Reporter(quiet=quiet)
    if output.exists() and not overwrite:
        raise MMCoreError(f"{output} already exists; pass --overwrite to replace it")
    if options.features is None and not (source / IMAGES_DIR).is_dir():
        raise MMCoreError(f"{source}: no {IMAGES_DIR}/ folder; put the images there or give an existing feature "
                          "store (--features STORE.h5)")
    if options.features is None and options.extractor is None:
        raise MMCoreError("extracting features from images needs an extractor (--extractor, e.g. grid)")
    digest = content_hash(source, options)
    work = output.with_name(output.name + ".partial")
    _start(work, digest)
    annotations = read_source(source)
    ids = sorted(annotations.image_ids())
    store = _features(source, work, ids, annotations, options, reporter)
    manifest = _finish(source, work, digest, annotations, store, options, reporter)
    (work / "source.sha256").unlink()
    if output.exists():
        shutil.rmtree(output)
    os.replace(work, output)
    return manifest


def _start(work: Path, digest: str) -> None:
    """Reuse a partial folder of the same inputs; otherwise begin a fresh one."""
    marker = work / "source.sha256"
    if work.is_dir() and marker.is_file() and marker.read_text().strip() == digest:
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_lines(marker, [digest])


def _unknown_images(annotations: Annotations, known: Iterable[str], where: str) -> None:
    known = set(known)
    bad = [(r.where, i) for splits in annotations.records.values() for recs in splits.values() for r in recs
           for i in r.images if i not in known]
    if bad:
        shown = "; ".join(f"{w}: {i!r}" for w, i in bad[:5])
        raise MMCoreError(f"{len(bad)} annotation(s) name an image that is not in {where}: {shown}"
                          f"{' ...' if len(bad) > 5 else ''}")


def _features(source: Path, work: Path, ids: list[str], annotations: Annotations, options: PrepareOptions,
              reporter: Reporter) -> FeatureStore:
    final = work / FEATURES
    if options.normalise not in NORMALISATIONS:
        raise MMCoreError(f"feature normalisation must be one of {', '.join(NORMALISATIONS)}, "
                          f"got {options.normalise!r}")
    if options.features is not None:
        given = FeatureStore(options.features, cache="disk")
        _unknown_images(annotations, given.ids(), str(options.features))
        raw = options.features
        for kind in ("objects", "attributes"):
            names = vocabulary_path(options.features, kind)
            if names.is_file():
                write_lines(work / f"{kind}_vocab.txt", read_vocab_txt(names))
    else:
        files = list_image_files(source / IMAGES_DIR)
        _unknown_images(annotations, files, str(source / IMAGES_DIR))
        raw = work / "raw_features.h5"
        if not final.is_file() and not raw.is_file():
            assert options.extractor is not None
            _extract_shards(work, [(i, files[i]) for i in ids], options.extractor, options.shard_size, reporter)
            _merge_shards(work, raw, len(ids), options.extractor)
            for kind, names in options.extractor.vocabularies().items():
                write_lines(work / f"{kind}_vocab.txt", names)
    if not final.is_file():
        if options.normalise == "standardise":
            train = {i for k in annotations.kinds() for r in annotations.of(k, "train") for i in r.images}
            save_statistics(work / STATS_FILE, *standardise_store(raw, final, train or None))
        else:
            with atomic_path(final) as tmp:
                shutil.copyfile(raw, tmp)
    if raw != options.features:
        raw.unlink(missing_ok=True)
    return FeatureStore(final, cache="disk")


def _extract_shards(work: Path, images: list[tuple[str, Path]], extractor: Extractor, shard_size: int,
                    reporter: Reporter) -> None:
    _, decode = image_decoder()
    shards = work / "shards"
    shards.mkdir(exist_ok=True)
    with reporter.bar(f"extract ({extractor.name})", len(images)) as bar:
        for number, start in enumerate(range(0, len(images), shard_size)):
            batch = images[start : start + shard_size]
            path = shards / f"{number:06d}.npz"
            if not path.is_file():
                _write_shard(path, batch, extractor, decode)
            bar.advance(len(batch))


def _write_shard(path: Path, batch: list[tuple[str, Path]], extractor: Extractor, decode: Any) -> None:
    pixels = []
    for img_id, file in batch:
        try:
            pixels.append(decode(file))
        except ImageReadError as exc:
            raise MMCoreError(f"{exc}; fix or remove the image (its annotations name it as {img_id!r})") from None
    regions = extractor.extract(pixels)
    o, f = extractor.max_boxes, extractor.feature_dim
    arrays = {"features": np.zeros((len(batch), o, f), np.float16), "boxes": np.zeros((len(batch), o, 4), np.float32),
              "num_boxes": np.zeros(len(batch), np.int32), "obj_ids": np.zeros((len(batch), o), np.int64),
              "obj_conf": np.zeros((len(batch), o), np.float32), "attr_ids": np.zeros((len(batch), o), np.int64),
              "attr_conf": np.zeros((len(batch), o), np.float32)}
    for row, found in enumerate(regions):
        n = len(found.features)
        arrays["num_boxes"][row] = n
        arrays["features"][row, :n] = found.features
        arrays["boxes"][row, :n] = found.boxes
        for name, value in zip(("obj_ids", "obj_conf", "attr_ids", "attr_conf"), found.labels()):
            arrays[name][row, :n] = value
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        np.savez(out, image_ids=np.array([i for i, _ in batch]), **arrays)


def _merge_shards(work: Path, final: Path, count: int, extractor: Extractor) -> None:
    with FeatureStoreWriter(final, count, extractor.max_boxes, extractor.feature_dim) as writer:
        for shard in sorted((work / "shards").glob("*.npz")):
            with np.load(shard, allow_pickle=False) as z:
                writer.add_batch([str(i) for i in z["image_ids"]], **{k: z[k] for k in z.files if k != "image_ids"})
    shutil.rmtree(work / "shards")


def _finish(source: Path, work: Path, digest: str, annotations: Annotations, store: FeatureStore,
            options: PrepareOptions, reporter: Reporter) -> dict[str, Any]:
    write_json(work / ANNOTATIONS, _plain(annotations))
    tokenizer = _tokenizer(work, annotations, options)
    answers = {}
    for kind in QUESTION_KINDS:
        if annotations.of(kind, "train"):
            table = answer_table(annotations, kind, options.min_answer_count)
            write_json(work / f"answers_{kind}.json", table)
            answers[kind] = f"answers_{kind}.json"
    train_images = sorted({i for k in annotations.kinds() for r in annotations.of(k, "train") for i in r.images})
    if len(train_images) > 1 and not (work / HARD_NEGATIVES).is_file():
        with reporter.bar("hard negatives", len(train_images)) as bar:
            rows = np.array([store.index(i) for i in train_images])
            pooled = store.mean_pooled()[rows]
            pool = nearest_images_torch(pooled, options.hard_negatives_top, progress=bar.advance)
        save_hard_negatives(work / HARD_NEGATIVES, train_images, pool)
    has_labels = _has_labels(store.path)
    store.close()
    manifest = {
        "format": FORMAT, "version": VERSION, "source": str(source.resolve()), "sha256": digest,
        "features": FEATURES, "feature_dim": store.feature_dim, "max_regions": store.max_boxes,
        "images": len(store), "extractor": options.key()["extractor"], "detector_labels": has_labels,
        "feature_normalisation": options.normalise,
        "tokenizer": tokenizer, "answers": answers,
        "hard_negatives": HARD_NEGATIVES if (work / HARD_NEGATIVES).is_file() else None,
        "counts": {k: {s: len(annotations.of(k, s)) for s in annotations.records[k]} for k in annotations.kinds()},
    }
    write_json(work / MANIFEST, manifest)
    return manifest


def _has_labels(path: Path) -> bool:
    """Whether any region of the store carries a detector label (a confident object id)."""
    with h5py.File(path, "r") as f:
        conf = f["obj_conf"]
        return any(bool(np.any(conf[i : i + 1024] > 0)) for i in range(0, conf.shape[0], 1024))


def read_annotations(directory: Path) -> Annotations:
    """The normalised records of a prepared dataset directory."""
    path = directory / ANNOTATIONS
    data = json.loads(path.read_text(encoding="utf-8"))
    out = Annotations(files=[path])
    for kind, splits in data.items():
        for split, recs in splits.items():
            out.records.setdefault(kind, {})[split] = [
                Record(tuple(r.pop("images")), r.pop("text"), r, f"{path}:{kind}/{split}/{i}")
                for i, r in enumerate(recs)]
    return out


def _plain(annotations: Annotations) -> dict[str, Any]:
    return {kind: {split: [{"images": list(r.images), "text": r.text, **r.data} for r in recs]
                   for split, recs in splits.items()} for kind, splits in annotations.records.items()}


def _tokenizer(work: Path, annotations: Annotations, options: PrepareOptions) -> str:
    """Copy the named tokenizer, or build a WordPiece vocabulary from the training texts; returns its folder."""
    if options.tokenizer is not None:
        target = work / "tokenizer"
        if not target.is_dir():
            source = local_path(options.tokenizer)  # or a Hub id's snapshot in the local Hugging Face cache
            if not source.is_dir():
                raise MMCoreError(f"--tokenizer {options.tokenizer}: not a tokenizer directory"
                                  f"{not_found_hint(options.tokenizer)}")
            with atomic_path(target) as tmp:
                shutil.copytree(source, tmp)
        return "tokenizer"
    texts = [t for k in annotations.kinds() for r in annotations.of(k, "train")
             for t in r.data.get("texts", [r.text])]
    if not texts:
        raise MMCoreError("no training text to build a vocabulary from (no record has split 'train'); give one "
                          "or name a tokenizer (--tokenizer DIR)")
    objects = work / "objects_vocab.txt"
    required = [w for w in read_vocab_txt(objects) if len(w.split()) == 1] if objects.is_file() else []
    build_wordpiece(texts, work, options.vocab_size, required=required)
    return "."


def answer_table(annotations: Annotations, kind: str, min_count: int = 1) -> list[str]:
    """The answers of the training questions of ``kind`` given at least ``min_count`` times, most frequent first."""
    counts: Counter[str] = Counter(a for r in annotations.of(kind, "train") for a, s in r.data["label"].items()
                                   if s > 0)
    table = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    if not table:
        raise MMCoreError(f"no {kind} answer is given {min_count} or more times in the training split")
    return table
