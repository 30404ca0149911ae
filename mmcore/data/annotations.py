"""Readers and writers for the annotation formats of real V+L data (see REFERENCE.md), kept format-faithful.

- LXMERT pre-training JSON: ``[{img_id, sentf: {source: [sentence]}, labelf: {source: [{answer: score}]}}]``.
- VQA JSON: ``[{answer_type, img_id, label: {answer: score}, question_id, question_type, sent}]`` with the
  answer tables ``trainval_ans2label.json`` / ``trainval_label2ans.json``.
- Flickr30k-style retrieval JSON: ``[{img_path: "<id>.jpg", sentences: [caption, ...]}]``.
- Detector vocabularies: one name per line; bottom-up-attention lines may read ``name,alias,...`` (first kept).

Writers write a temporary file and rename it, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from mmcore.data.fileio import write_json, write_lines
from mmcore.errors import MMCoreError

PathLike = str | os.PathLike[str]
ANS2LABEL = "trainval_ans2label.json"
LABEL2ANS = "trainval_label2ans.json"
_VQA_KEYS = ("img_id", "label", "question_id", "sent")


def _load(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MMCoreError(f"annotation file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise MMCoreError(f"{path}: not valid JSON ({exc})") from None


def _require_list(path: PathLike, data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise MMCoreError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    return data


# ---- LXMERT pre-training JSON ----------------------------------------------------------------------------

def read_pretrain(path: PathLike) -> list[dict[str, Any]]:
    """Records of an LXMERT pre-training file; checks ``img_id`` and that ``sentf`` maps sources to lists."""
    records = _require_list(path, _load(path), "pre-training records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "img_id" not in rec or not isinstance(rec.get("sentf"), dict):
            raise MMCoreError(f"{path}: record {i} lacks 'img_id' or a 'sentf' object")
        for source, sents in rec["sentf"].items():
            if not isinstance(sents, list):
                raise MMCoreError(f"{path}: record {i} ({rec['img_id']}): sentf[{source!r}] is not a list")
        rec.setdefault("labelf", {})
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
        missing = [k for k in _VQA_KEYS if k != "label" and k not in rec]
        if missing:
            raise MMCoreError(f"{path}: question {i} lacks {', '.join(missing)}")
        rec.setdefault("label", {})
    return records


def write_vqa(path: PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write VQA records as they are (keys as in the module docstring)."""
    for i, rec in enumerate(records):
        missing = [k for k in _VQA_KEYS if k not in rec]
        if missing:
            raise MMCoreError(f"{path}: question {i} lacks {', '.join(missing)}")
    write_json(path, list(records))


def vqa_soft_score(annotators: int) -> float:
    """The standard VQA score of an answer given by ``annotators`` of 10: 1 → 0.3, 2 → 0.6, 3 → 0.9, 4+ → 1."""
    return 0.0 if annotators <= 0 else min(1.0, round(0.3 * annotators, 1))


def write_answer_table(directory: PathLike, answers: Sequence[str]) -> None:
    """Write ``trainval_ans2label.json`` and ``trainval_label2ans.json`` for an ordered answer list."""
    if len(set(answers)) != len(answers):
        raise MMCoreError(f"{directory}: the answer table has duplicate answers")
    directory = Path(directory)
    write_json(directory / ANS2LABEL, {a: i for i, a in enumerate(answers)})
    write_json(directory / LABEL2ANS, list(answers))


def read_answer_table(directory: PathLike) -> list[str]:
    """The ordered answer list; read from ``trainval_label2ans.json``, checked against ``ans2label`` if present."""
    directory = Path(directory)
    label2ans = _require_list(directory / LABEL2ANS, _load(directory / LABEL2ANS), "answers")
    if (directory / ANS2LABEL).is_file():
        ans2label = _load(directory / ANS2LABEL)
        if any(ans2label.get(a) != i for i, a in enumerate(label2ans)) or len(ans2label) != len(label2ans):
            raise MMCoreError(f"{directory}: {ANS2LABEL} and {LABEL2ANS} disagree")
    return [str(a) for a in label2ans]


# ---- Flickr30k-style retrieval ----------------------------------------------------------------------------

def read_retrieval(path: PathLike) -> list[tuple[str, list[str]]]:
    """(img_id, captions) per image; ``img_id`` is ``img_path`` without its extension, as LXMERT-S uses it."""
    items = _require_list(path, _load(path), "retrieval images")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "img_path" not in item or not isinstance(item.get("sentences"), list):
            raise MMCoreError(f"{path}: entry {i} lacks 'img_path' or a 'sentences' list")
        out.append((Path(item["img_path"]).stem, [str(s) for s in item["sentences"]]))
    return out


def write_retrieval(path: PathLike, items: Sequence[tuple[str, Sequence[str]]], ext: str = ".jpg") -> None:
    """Write (img_id, captions) pairs as ``{img_path: "<id>.jpg", sentences: [...]}`` records."""
    write_json(path, [{"img_path": f"{img_id}{ext}", "sentences": list(caps)} for img_id, caps in items])


# ---- detector vocabularies --------------------------------------------------------------------------------

def read_vocab_txt(path: PathLike) -> list[str]:
    """Names of a detector vocabulary, one per line; of ``name,alias`` lines the first name is kept."""
    path = Path(path)
    if not path.is_file():
        raise MMCoreError(f"vocabulary file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        names = [line.split(",")[0].strip() for line in f if line.strip()]
    if not names:
        raise MMCoreError(f"{path}: the vocabulary is empty")
    return names


def write_vocab_txt(path: PathLike, names: Sequence[str]) -> None:
    """Write one name per line."""
    bad = [n for n in names if "," in n or "\n" in n or not n.strip()]
    if bad:
        raise MMCoreError(f"{path}: vocabulary names may not be empty or contain ',' or newlines: {bad[:5]}")
    write_lines(path, list(names))
