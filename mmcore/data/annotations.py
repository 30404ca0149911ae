"""Readers and writers for the annotation formats of real V+L data (see REFERENCE.md), kept format-faithful.

- LXMERT pre-training JSON: ``[{img_id, sentf: {source: [sentence]}, labelf: {source: [{answer: score}]}}]``.
- VQA JSON: ``[{answer_type, img_id, label: {answer: score}, question_id, question_type, sent}]`` with the
  answer tables ``trainval_ans2label.json`` / ``trainval_label2ans.json``.
- Flickr30k-style retrieval JSON: ``[{img_path: "<id>.jpg", sentences: [caption, ...]}]``.
- GQA JSON: ``[{img_id, label: {answer: 1.0}, question_id (str), sent}]`` with its own answer table.
- NLVR2 JSON: ``[{identifier, img0, img1, label (0/1), sent, uid}]``.
- Detector vocabularies: one name per line; bottom-up-attention lines may read ``name,alias,...`` (first kept).

Writers write a temporary file and rename it, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mmcore.data.fileio import write_json, write_lines
from mmcore.errors import DataError

__all__ = ["read_pretrain", "write_pretrain", "pretrain_sentences", "read_vqa", "write_vqa", "vqa_soft_score",
    "read_answer_table", "write_answer_table", "read_answer_file", "write_answer_file", "drop_unknown_answers",
    "read_retrieval", "write_retrieval", "read_gqa", "write_gqa", "read_nlvr2", "write_nlvr2", "read_vocab_txt",
    "write_vocab_txt"]

PathLike = str | os.PathLike[str]
ANS2LABEL = "trainval_ans2label.json"
LABEL2ANS = "trainval_label2ans.json"
_VQA_KEYS = ("img_id", "label", "question_id", "sent")


def _load(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: byte {exc.start} is not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None


def _field(path: PathLike, what: str, rec: Any, key: str, kind: type | tuple[type, ...], kind_name: str) -> Any:
    """``rec[key]``, checked to be a mapping entry of type ``kind``; the error names file, record and key."""
    if not isinstance(rec, dict):
        raise DataError(f"{path}: {what} is a {type(rec).__name__}, not a JSON object")
    if key not in rec:
        raise DataError(f"{path}: {what} lacks {key!r}")
    value = rec[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: {what}: {key!r} must be {kind_name}, got {type(value).__name__} {value!r:.60}")
    return value


def _strings(path: PathLike, what: str, values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DataError(f"{path}: {what} must be a list of strings, got {values!r:.60}")
    return values


def _require_list(path: PathLike, data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    return data


# ---- LXMERT pre-training JSON ----------------------------------------------------------------------------

def read_pretrain(path: PathLike) -> list[dict[str, Any]]:
    """Records of an LXMERT pre-training file; checks ``img_id`` and that ``sentf`` maps sources to lists."""
    records = _require_list(path, _load(path), "pre-training records")
    for i, rec in enumerate(records):
        img_id = _field(path, f"record {i}", rec, "img_id", str, "a string")
        what = f"record {i} ({img_id})"
        sentf = _field(path, what, rec, "sentf", dict, "an object mapping sources to sentence lists")
        for source, sents in sentf.items():
            _strings(path, f"{what}: sentf[{source!r}]", sents)
        if not isinstance(rec.setdefault("labelf", {}), dict):
            raise DataError(f"{path}: {what}: 'labelf' must be an object, got {type(rec['labelf']).__name__}")
    return records


def write_pretrain(path: PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write LXMERT pre-training records (each with ``img_id``, ``sentf`` and optionally ``labelf``)."""
    write_json(path, [{"img_id": r["img_id"], "sentf": r["sentf"], "labelf": r.get("labelf", {})} for r in records])


def pretrain_sentences(records: Iterable[dict[str, Any]], source: str) -> list[tuple[str, str]]:
    """(img_id, sentence) for every sentence of one source (e.g. ``mscoco``, ``vg``), in file order."""
    return [(rec["img_id"], sent) for rec in records for sent in rec["sentf"].get(source, [])]


# ---- VQA --------------------------------------------------------------------------------------------------

def read_vqa(path: PathLike) -> list[dict[str, Any]]:
    """VQA records; ``label`` may be absent (test files) and is then ``{}``."""
    records = _require_list(path, _load(path), "VQA questions")
    for i, rec in enumerate(records):
        what = _check_question(path, i, rec, [k for k in _VQA_KEYS if k != "label"])
        _field(path, what, rec, "question_id", (int, str), "an integer or a string")
    return records


def _check_question(path: PathLike, i: int, rec: Any, keys: Sequence[str]) -> str:
    """Check question ``i``'s shape, text and label (an absent label becomes ``{}``); how to name it in errors."""
    if not isinstance(rec, dict):
        raise DataError(f"{path}: question {i} is a {type(rec).__name__}, not a JSON object")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataError(f"{path}: question {i} lacks {', '.join(repr(k) for k in missing)}")
    what = f"question {i} (question_id {rec['question_id']!r})"
    _field(path, what, rec, "img_id", str, "a string")
    _field(path, what, rec, "sent", str, "a string")
    label = rec.setdefault("label", {})
    if not isinstance(label, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in label.values()):
        raise DataError(f"{path}: {what}: 'label' must map answers to scores, got {label!r:.60}")
    return what


def write_vqa(path: PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write VQA records as they are (keys as in the module docstring)."""
    for i, rec in enumerate(records):
        missing = [k for k in _VQA_KEYS if k not in rec]
        if missing:
            raise DataError(f"{path}: question {i} lacks {', '.join(missing)}")
    write_json(path, list(records))


def vqa_soft_score(annotators: int) -> float:
    """The standard VQA score of an answer given by ``annotators`` of 10: 1 → 0.3, 2 → 0.6, 3 → 0.9, 4+ → 1."""
    return 0.0 if annotators <= 0 else min(1.0, round(0.3 * annotators, 1))


def write_answer_table(directory: PathLike, answers: Sequence[str]) -> None:
    """Write ``trainval_ans2label.json`` and ``trainval_label2ans.json`` for an ordered answer list."""
    if len(set(answers)) != len(answers):
        raise DataError(f"{directory}: the answer table has duplicate answers")
    directory = Path(directory)
    write_json(directory / ANS2LABEL, {a: i for i, a in enumerate(answers)})
    write_json(directory / LABEL2ANS, list(answers))


def read_answer_table(directory: PathLike) -> list[str]:
    """The ordered answer list; read from ``trainval_label2ans.json``, checked against ``ans2label`` if present."""
    directory = Path(directory)
    label2ans = _require_list(directory / LABEL2ANS, _load(directory / LABEL2ANS), "answers")
    if (directory / ANS2LABEL).is_file():
        ans2label = _load(directory / ANS2LABEL)
        if not isinstance(ans2label, dict):
            raise DataError(f"{directory / ANS2LABEL}: expected a JSON object mapping answers to labels, "
                            f"got {type(ans2label).__name__}")
        if any(ans2label.get(a) != i for i, a in enumerate(label2ans)) or len(ans2label) != len(label2ans):
            raise DataError(f"{directory}: {ANS2LABEL} and {LABEL2ANS} disagree")
    return [str(a) for a in label2ans]


def read_answer_file(path: PathLike) -> list[str]:
    """The ordered answer list of one answer-table file as LXMERT ships it: ``trainval_ans2label.json``
    (``{answer: index}``, indices 0..A-1) or ``trainval_label2ans.json`` (a list)."""
    data = _load(path)
    if isinstance(data, list):
        return [str(a) for a in data]
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {{answer: index}} or a list of answers, got {type(data).__name__}")
    answers: list[str | None] = [None] * len(data)
    for answer, index in data.items():
        if not isinstance(index, int) or not 0 <= index < len(data) or answers[index] is not None:
            raise DataError(f"{path}: answer {answer!r} has index {index!r}; indices must be 0..{len(data) - 1}, "
                            "each used once")
        answers[index] = str(answer)
    return [str(a) for a in answers]


def drop_unknown_answers(records: Sequence[dict[str, Any]], answers: Sequence[str]) -> tuple[int, int]:
    """Remove, in place, every ``label`` answer that is not in the table; returns (answers removed, questions
    left with no answer). Such questions stay: their target is all zero, as no classifier over the table can
    answer them."""
    table = set(answers)
    removed = emptied = 0
    for rec in records:
        label = rec.get("label") or {}
        kept = {a: s for a, s in label.items() if a in table}
        removed += len(label) - len(kept)
        emptied += bool(label) and not kept
        rec["label"] = kept
    return removed, emptied


# ---- Flickr30k-style retrieval ----------------------------------------------------------------------------

def read_retrieval(path: PathLike) -> list[tuple[str, list[str]]]:
    """(img_id, captions) per image; ``img_id`` is ``img_path`` without its extension, as LXMERT-S uses it."""
    items = _require_list(path, _load(path), "retrieval images")
    out = []
    for i, item in enumerate(items):
        img_path = _field(path, f"entry {i}", item, "img_path", str, "a string")
        sentences = _field(path, f"entry {i} ({img_path})", item, "sentences", list, "a list of captions")
        out.append((Path(img_path).stem, _strings(path, f"entry {i} ({img_path}): 'sentences'", sentences)))
    return out


def write_retrieval(path: PathLike, items: Sequence[tuple[str, Sequence[str]]], ext: str = ".jpg") -> None:
    """Write (img_id, captions) pairs as ``{img_path: "<id>.jpg", sentences: [...]}`` records."""
    write_json(path, [{"img_path": f"{img_id}{ext}", "sentences": list(caps)} for img_id, caps in items])


# ---- detector vocabularies --------------------------------------------------------------------------------

def read_vocab_txt(path: PathLike) -> list[str]:
    """Names of a detector vocabulary, one per line; of ``name,alias`` lines the first name is kept."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"vocabulary file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.split(",")[0].strip() for line in f if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text vocabulary (byte {exc.start} is not UTF-8)") from None
    if not names:
        raise DataError(f"{path}: the vocabulary is empty")
    return names


def write_vocab_txt(path: PathLike, names: Sequence[str]) -> None:
    """Write one name per line."""
    bad = [n for n in names if "," in n or "\n" in n or not n.strip()]
    if bad:
        raise DataError(f"{path}: vocabulary names may not be empty or contain ',' or newlines: {bad[:5]}")
    write_lines(path, list(names))


# ---- GQA --------------------------------------------------------------------------------------------------

_GQA_KEYS = ("img_id", "question_id", "sent")
_NLVR2_KEYS = ("identifier", "img0", "img1", "sent")


def read_gqa(path: PathLike) -> list[dict[str, Any]]:
    """GQA records as LXMERT ships them: ``{img_id, label: {answer: 1.0}, question_id (str), sent}``; ``label``
    may be absent (``submit.json``) and is then ``{}``; ``question_id`` stays a string."""
    records = _require_list(path, _load(path), "GQA questions")
    for i, rec in enumerate(records):
        what = _check_question(path, i, rec, _GQA_KEYS)
        rec["question_id"] = str(_field(path, what, rec, "question_id", (str, int), "a string"))
    return records


def write_gqa(path: PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write GQA records (``img_id``, ``label``, ``question_id`` as a string, ``sent``)."""
    for i, rec in enumerate(records):
        missing = [k for k in (*_GQA_KEYS, "label") if k not in rec]
        if missing:
            raise DataError(f"{path}: question {i} lacks {', '.join(missing)}")
        if not isinstance(rec["question_id"], str):
            raise DataError(f"{path}: question {i}: GQA question ids are strings, got {rec['question_id']!r}")
    write_json(path, [{"img_id": r["img_id"], "label": r["label"], "question_id": r["question_id"],
                       "sent": r["sent"]} for r in records])


def write_answer_file(path: PathLike, answers: Sequence[str]) -> None:
    """Write one answer table as ``{answer: index}`` (e.g. GQA's ``trainval_ans2label.json``); read it back with
    :func:`read_answer_file`."""
    if len(set(answers)) != len(answers):
        raise DataError(f"{path}: the answer table has duplicate answers")
    write_json(path, {a: i for i, a in enumerate(answers)})


# ---- NLVR2 ------------------------------------------------------------------------------------------------

def _nlvr2_label(path: PathLike, what: str, value: Any) -> int:
    # LXMERT's files hold 0/1; the original NLVR2 release writes "True"/"False".
    if value in ("True", "False"):
        return int(value == "True")
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    raise DataError(f"{path}: {what}: 'label' must be 0 or 1 (or \"True\"/\"False\"), got {value!r:.60}")


def read_nlvr2(path: PathLike) -> list[dict[str, Any]]:
    """NLVR2 records ``{identifier, img0, img1, label (0/1), sent, uid}``; ``label`` becomes an int (absent:
    -1, unlabelled) and ``uid`` defaults to the identifier."""
    records = _require_list(path, _load(path), "NLVR2 statements")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: statement {i} is a {type(rec).__name__}, not a JSON object")
        missing = [k for k in _NLVR2_KEYS if k not in rec]
        if missing:
            raise DataError(f"{path}: statement {i} lacks {', '.join(repr(k) for k in missing)}")
        what = f"statement {i} (identifier {rec['identifier']!r})"
        for key in _NLVR2_KEYS:
            _field(path, what, rec, key, str, "a string")
        rec["label"] = _nlvr2_label(path, what, rec["label"]) if "label" in rec else -1
        rec.setdefault("uid", rec["identifier"])
    return records


def write_nlvr2(path: PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write NLVR2 records in LXMERT's form (``label`` 0/1)."""
    out = []
    for i, rec in enumerate(records):
        missing = [k for k in (*_NLVR2_KEYS, "label") if k not in rec]
        if missing:
            raise DataError(f"{path}: statement {i} lacks {', '.join(missing)}")
        out.append({"identifier": rec["identifier"], "img0": rec["img0"], "img1": rec["img1"],
                    "label": _nlvr2_label(path, f"statement {i}", rec["label"]), "sent": rec["sent"],
                    "uid": rec.get("uid", rec["identifier"])})
    write_json(path, out)
