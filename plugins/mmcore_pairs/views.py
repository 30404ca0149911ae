"""Build the ``pairs`` dataset's views from its normalised records with mmcore's generic view classes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmcore.api import ExampleSource, MMCoreError
from mmcore.data.userdata import Record
from mmcore.data.views import (
    AnswerView,
    CaptionRankingView,
    PairView,
    TwoImageView,
    phrase_descriptions,
    token_pairs,
)

if TYPE_CHECKING:
    from mmcore_pairs.dataset import Pairs


def build_view(data: Pairs, name: str, split: str) -> ExampleSource:
    """One view and split of ``data``; an error naming the annotation file the view needs when it has none."""
    store, hard = data.store(), data.hard_negatives(split)
    notes = data.annotations()
    if name == "token":
        if not data.manifest()["detector_labels"]:
            raise MMCoreError(f"dataset 'pairs': view 'token' needs detector labels in the features, and "
                              f"{data.directory} has none (extract with a detector, e.g. --extractor "
                              "torchvision_detector)")
        ids = list(dict.fromkeys(i for kind in notes.kinds() for r in notes.of(kind, split) for i in r.images))
        if not ids:
            raise _missing(data, "any kind", split)
        return PairView(token_pairs(store, data.object_names(), ids), store, hard)
    if name == "retrieval" and not notes.of("retrieval", split):
        items = _by_image(_records(data, "captions", split, "retrieval"))
        return CaptionRankingView(list(items.items()), store, hard)
    kind = {"phrase": "phrases", "sentence": "captions"}.get(name, name)
    records = _records(data, kind, split, name)
    if name == "sentence":
        return PairView([(r.images[0], r.text) for r in records], store, hard)
    if name == "phrase":
        return PairView(_phrase_pairs(data, records), store, hard)
    if name == "retrieval":
        return CaptionRankingView([(r.images[0], r.data["texts"]) for r in records], store, hard)
    if name == "nlvr2":
        return TwoImageView([{"img0": r.images[0], "img1": r.images[1], "sent": r.text, **r.data} for r in records],
                            store, label_field="nlvr2_label")
    rows = [{"img_id": r.images[0], "sent": r.text, "label": r.data["label"], "question_id": r.data["question_id"]}
            for r in records]
    # Question ids are strings here (``<file>:<line>`` or the record's ``id``), for VQA too.
    view: Any = AnswerView(rows, data.answers(name), store, hard, target_field=f"{name}_target", question_id_type=str)
    # Read by the answer heads: the baseline to beat, and the question types to score separately.
    view.question_only = data.question_only(name, split)
    view.question_types = [r.data.get("type") for r in records]
    return view


def _records(data: Pairs, kind: str, split: str, view: str) -> list[Record]:
    records = data.annotations().of(kind, split)
    if not records:
        raise _missing(data, kind, split, view)
    return records


def _missing(data: Pairs, kind: str, split: str, view: str = "token") -> MMCoreError:
    return MMCoreError(f"dataset 'pairs': view {view!r} has no {split!r} records in {data.root} (it reads {kind} "
                       f"annotations: {kind}.jsonl with split {split!r}, or {kind}_{split}.jsonl)")


def _by_image(records: list[Record]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r.images[0], []).append(r.text)
    return out


def _phrase_pairs(data: Pairs, records: list[Record]) -> list[tuple[str, str]]:
    """Each image's phrases, a few at a time joined with ", " into ``phrases_per_image`` descriptions."""
    o = data.options
    pairs = []
    for img_id, phrases in _by_image(records).items():
        texts = phrase_descriptions(phrases, int(o["phrases_per_image"]), data.phrase_rng(img_id),
                                    min_phrases=int(o["min_phrases"]), max_phrases=int(o["max_phrases"]))
        pairs += [(img_id, text) for text in texts]
    return pairs
