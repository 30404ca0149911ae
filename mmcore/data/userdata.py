"""Your own annotations as JSONL: one small explicit schema per kind, splits as files or a ``split`` column.

A source folder holds ``images/`` (JPEG/PNG, subfolders allowed) and one or more annotation files named
``<kind>.jsonl`` (every record carries ``"split"``) or ``<kind>_<split>.jsonl``. Kinds and their records:

=============  ======================================================================  ==================
kind           record                                                                   views
=============  ======================================================================  ==================
captions       ``{"image", "text"}``                                                   sentence, retrieval
phrases        ``{"image", "text"}`` (short region phrases)                             phrase
vqa            ``{"image", "question", "answers": [str] or {str: score}, "id"?, "type"?}``  vqa
gqa            ``{"image", "question", "answer": str, "id"?, "type"?}``                   gqa
nlvr2          ``{"images": [left, right], "text", "label": bool, "id"?}``               nlvr2
retrieval      ``{"image", "texts": [str]}``                                            retrieval
=============  ======================================================================  ==================

``image`` is the image's path under ``images/`` with or without its extension; that path without the extension
is the image id, so ``train/0.png`` and ``test/0.png`` never collide. Question ids are the record's ``id`` or
``<file>:<line>``; an ``id`` given twice in one split is an error naming both files and lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcore.data.annotations import vqa_soft_score
from mmcore.data.images import IMAGE_SUFFIXES
from mmcore.errors import MMCoreError

__all__ = ["Record", "Annotations", "IMAGES_DIR", "SPLITS", "read_source"]

SPLITS = ("train", "val", "test")
# kind -> (required keys, optional keys)
SCHEMAS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "captions": (frozenset({"image", "text"}), frozenset()),
    "phrases": (frozenset({"image", "text"}), frozenset()),
    "vqa": (frozenset({"image", "question", "answers"}), frozenset({"id", "type"})),
    "gqa": (frozenset({"image", "question", "answer"}), frozenset({"id", "type"})),
    "nlvr2": (frozenset({"images", "text", "label"}), frozenset({"id"})),
    "retrieval": (frozenset({"image", "texts"}), frozenset()),
}
IMAGES_DIR = "images"


@dataclass
class Record:
    """One normalised annotation: ``images`` (ids), ``text``, the kind's fields in ``data``, and where it came from."""

    images: tuple[str, ...]
    text: str
    data: dict[str, Any]
    where: str  # "file:line"


@dataclass
class Annotations:
    """Every record of a source folder by kind and split, and the files they came from."""

    records: dict[str, dict[str, list[Record]]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def of(self, kind: str, split: str) -> list[Record]:
        """The records of one kind and split (empty when there are none)."""
        return self.records.get(kind, {}).get(split, [])

    def kinds(self) -> list[str]:
        """The kinds that have at least one record."""
        return [k for k in SCHEMAS if any(self.records.get(k, {}).values())]

    def image_ids(self) -> set[str]:
        """Every image id any record names."""
        return {i for splits in self.records.values() for recs in splits.values() for r in recs for i in r.images}


def image_id(reference: str) -> str:
    """The image id of an ``image`` reference: the path without a known image extension, ``/``-separated."""
    ref = reference.replace("\\", "/").strip("/")
    for suffix in IMAGE_SUFFIXES:
        if ref.lower().endswith(suffix):
            return ref[: -len(suffix)]
    return ref


def list_image_files(folder: Path) -> dict[str, Path]:
    """Image id -> file of every JPEG/PNG under ``folder`` (recursively); two files of one id are an error."""
    if not folder.is_dir():
        raise MMCoreError(f"{folder} is not a directory of images")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            img_id = image_id(path.relative_to(folder).as_posix())
            if img_id in found:
                raise MMCoreError(f"{found[img_id]} and {path} have the same image id {img_id!r} (the path without "
                                  "its extension); keep one of them")
            found[img_id] = path
    if not found:
        raise MMCoreError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)} files)")
    return found


def annotation_files(source: Path) -> list[tuple[str, str | None, Path]]:
    """(kind, split or None for a split column, path) of every annotation file in ``source``."""
    out = []
    for path in sorted(source.glob("*.jsonl")):
        kind, _, split = path.stem.partition("_")
        if kind not in SCHEMAS or (split and split not in SPLITS):
            raise MMCoreError(f"{path}: not an annotation file name; use <kind>.jsonl or <kind>_<split>.jsonl with "
                              f"kind one of {', '.join(SCHEMAS)} and split one of {', '.join(SPLITS)}")
        out.append((kind, split or None, path))
    kinds_with_column = {k for k, s, _ in out if s is None}
    both = sorted(k for k, s, _ in out if s is not None and k in kinds_with_column)
    if both:
        raise MMCoreError(f"{source}: {both[0]}.jsonl and {both[0]}_<split>.jsonl both exist; give the splits one "
                          "way: per-split files or a split column")
    if not out:
        raise MMCoreError(f"{source}: no annotation file (<kind>.jsonl or <kind>_<split>.jsonl, kinds: "
                          f"{', '.join(SCHEMAS)})")
    return out


def read_source(source: Path) -> Annotations:
    """Read and check every annotation file of a source folder."""
    result = Annotations()
    ids: dict[tuple[str, str, str], str] = {}  # (kind, split, question id) -> where first seen
    for kind, split, path in annotation_files(source):
        result.files.append(path)
        for line_no, raw in _lines(path):
            where = f"{path}:{line_no}"
            rec_split, record = _record(kind, split, raw, where, path.name, line_no)
            qid = record.data.get("question_id")
            if qid is not None:
                key = (kind, rec_split, str(qid))
                if key in ids:
                    raise MMCoreError(f"{kind} id {qid!r} of split {rec_split!r} is given twice: {ids[key]} and "
                                      f"{where}; ids must be unique within a split")
                ids[key] = where
            result.records.setdefault(kind, {}).setdefault(rec_split, []).append(record)
    return result


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MMCoreError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MMCoreError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from None
        if not isinstance(value, dict):
            raise MMCoreError(f"{path}:{line_no}: a record must be a JSON object, got {type(value).__name__}")
        yield line_no, value


def _record(kind: str, split: str | None, raw: dict[str, Any], where: str, file_name: str,
            line_no: int) -> tuple[str, Record]:
    required, optional = SCHEMAS[kind]
    allowed = required | optional | ({"split"} if split is None else set())
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise MMCoreError(f"{where}: unknown key(s) {', '.join(unknown)} for a {kind} record; keys: "
                          f"{', '.join(sorted(allowed))}")
    missing = sorted((required | ({"split"} if split is None else set())) - set(raw))
    if missing:
        raise MMCoreError(f"{where}: a {kind} record lacks {', '.join(missing)}")
    if split is None:
        split = raw["split"]
        if split not in SPLITS:
            raise MMCoreError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    qid = str(raw["id"]) if "id" in raw else f"{file_name}:{line_no}"
    if kind in ("captions", "phrases"):
        return split, Record((_image(raw, "image", where),), _text(raw, "text", where), {}, where)
    if kind == "retrieval":
        texts = raw["texts"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise MMCoreError(f"{where}: 'texts' must be a non-empty list of non-empty strings")
        return split, Record((_image(raw, "image", where),), texts[0], {"texts": list(texts)}, where)
    if kind == "nlvr2":
        pair = raw["images"]
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(i, str) for i in pair):
            raise MMCoreError(f"{where}: 'images' must be a list of two image names")
        if not isinstance(raw["label"], bool):
            raise MMCoreError(f"{where}: 'label' must be true or false, got {raw['label']!r}")
        return split, Record((image_id(pair[0]), image_id(pair[1])), _text(raw, "text", where),
                             {"label": int(raw["label"]), "identifier": qid}, where)
    data: dict[str, Any] = {"question_id": qid, "label": _answers(kind, raw, where)}
    if "type" in raw:
        data["type"] = str(raw["type"])
    return split, Record((_image(raw, "image", where),), _text(raw, "question", where), data, where)


def _image(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise MMCoreError(f"{where}: {key!r} must be an image name (a path under images/), got {value!r}")
    return image_id(value)


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise MMCoreError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _answers(kind: str, raw: dict[str, Any], where: str) -> dict[str, float]:
    """The soft answer scores: GQA's one answer scores 1; a VQA list scores each answer by how many gave it."""
    if kind == "gqa":
        answer = raw["answer"]
        if not isinstance(answer, str) or not answer.strip():
            raise MMCoreError(f"{where}: 'answer' must be a non-empty string")
        return {normalise_answer(answer): 1.0}
    answers = raw["answers"]
    if isinstance(answers, list):
        if not all(isinstance(a, str) and a.strip() for a in answers):
            raise MMCoreError(f"{where}: 'answers' must list non-empty strings")
        counts: dict[str, int] = {}
        for a in answers:
            counts[normalise_answer(a)] = counts.get(normalise_answer(a), 0) + 1
        # One answer given once is the whole truth (templated or single-annotator data), not VQA's 0.3.
        return {a: 1.0 for a in counts} if len(answers) == 1 else {a: vqa_soft_score(c) for a, c in counts.items()}
    if isinstance(answers, dict):
        scores = {}
        for a, s in answers.items():
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) <= 1.0:
                raise MMCoreError(f"{where}: the score of answer {a!r} must be a number in [0, 1], got {s!r}")
            scores[normalise_answer(a)] = float(s)
        return scores
    raise MMCoreError(f"{where}: 'answers' must be a list of answers or a map answer -> score, got {answers!r:.60}")


def normalise_answer(answer: str) -> str:
    """Answers compare lowercased with surrounding whitespace removed."""
    return " ".join(answer.lower().split())
