"""Build the ``lxmert`` views: read a split's files, apply the missing-image policy, count what was kept."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mmcore.api import FOCUS_SPANS, ExampleSource, MMCoreError
from mmcore.data import annotations as ann
from mmcore.data.views import (
    AnswerView,
    CaptionRankingView,
    PairView,
    TwoImageView,
    WordMarker,
    phrase_descriptions,
    token_pairs,
)
from mmcore_lxmert_data.stores import StoreUnion

if TYPE_CHECKING:
    from mmcore_lxmert_data.dataset import LxmertData

T = TypeVar("T")
Entry = tuple[Path, int, str | tuple[str, ...], T]  # (file, record index, img_id or the record's ids, item)


def n(count: int, word: str) -> str:
    """``3 images``, ``1 image``."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def build_view(ds: LxmertData, name: str, split: str, family: str) -> tuple[ExampleSource, str]:
    """The view and a one-line summary of its counts."""
    union = ds.stores(family)
    files = ds.files(family, split)
    where = f"from {', '.join(p.name for p in files)}"
    if family == "pretrain":
        entries = [(path, i, rec["img_id"], rec) for path in files for i, rec in enumerate(ann.read_pretrain(path))]
        records = present(ds, entries, union, f"{name}/{split}")
        hard = ds.hard_negatives("hard_negatives") if split == "train" else None
        if name == "token":
            ids, which = token_images(records, str(ds.options["token_images"]))
            view = PairView(token_pairs(union, ds.object_names(), ids), union, hard)  # type: ignore[arg-type]
            return view, f"{n(len(view), 'label text')} of {n(len(ids), 'image')} ({which}) {where}"
        if name == "sentence":
            view = PairView(ann.pretrain_sentences(records, "mscoco"), union, hard)  # type: ignore[arg-type]
            return view, f"{n(len(view), 'mscoco caption')} of {n(len(view.image_ids()), 'image')} {where}"
        pairs, counts = phrase_pairs(ds, records)
        # The phrases' attribute and category words (the detector's names, aliases too), which the phrase MLM masks.
        extra = WordMarker(ds.focus_words()).extras([text for _, text in pairs])
        view = PairView(pairs, union, hard, extra)  # type: ignore[arg-type]
        marked = sum(bool(e[FOCUS_SPANS]) for e in extra)
        return view, (f"{n(len(view), 'description')} of {n(len(view.image_ids()), 'image')} {where}; "
                      f"{counts['kept']:,} of {counts['total']:,} vg phrases kept, {counts['verb']:,} with a verb "
                      f"removed (verb_filter {ds.options['verb_filter']}); {marked:,} with attribute or category "
                      "words marked")
    if family in ("vqa", "gqa"):
        return answer_view(ds, family, files, union, split, where)
    if family == "nlvr2":
        return nlvr2_view(ds, files, union, split, where)
    return retrieval_view(ds, files, union, split, where)


def present(ds: LxmertData, entries: list[Entry[T]], union: StoreUnion, what: str) -> list[T]:
    """The items whose image is in ``union``; the others are an error or, with ``missing_images: skip``,
    counted, skipped and reported."""
    kept: list[T] = []
    skipped: Counter[Path] = Counter()
    for path, index, ids, item in entries:
        lost = [i for i in ((ids,) if isinstance(ids, str) else ids) if i not in union]
        if not lost:
            kept.append(item)
        elif ds.options["missing_images"] == "error":
            raise MMCoreError(f"{path}: record {index} (img_id {lost[0]!r}) is in none of the feature stores "
                              f"{union.path}; convert its features with `mmcore data convert-tsv` and list the store, "
                              "or set datasets.lxmert.missing_images=skip")
        else:
            skipped[path] += 1
    if skipped:
        detail = ", ".join(f"{count:,} of {path}" for path, count in skipped.items())
        ds._warn(f"lxmert {what}: skipped {n(sum(skipped.values()), 'record')} whose image is not in the feature "
                 f"stores ({detail})")
    return kept


def token_images(records: list[dict[str, Any]], source: str) -> tuple[list[str], str]:
    """(the token stage's images in file order, how they were chosen): those with a text of the ``sentf`` source
    ``source`` (``mscoco``: the COCO caption images, as in the paper), or every image for ``all``."""
    if source == "all":
        return list(dict.fromkeys(rec["img_id"] for rec in records)), "all images"
    ids = list(dict.fromkeys(rec["img_id"] for rec in records if rec["sentf"].get(source)))
    return ids, f"those with {source} captions; token_images: all widens"


def held_out_images(img_ids: list[str], fraction: float, seed: int) -> set[str]:
    """``ceil(fraction × n)`` of the images, chosen by a seeded hash of each id: the same whatever the files'
    order, and every question of an image on one side."""
    count = math.ceil(fraction * len(img_ids))
    ranked = sorted(set(img_ids), key=lambda i: hashlib.sha256(f"{seed}:{i}:holdout".encode()).hexdigest())
    return set(ranked[:count])


def phrase_pairs(ds: LxmertData, records: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], Counter[str]]:
    """(img_id, description) pairs from each record's ``vg`` phrases without a verb, and phrase counts."""
    has_verb = ds.verb_filter()
    opts = ds.options
    counts: Counter[str] = Counter()
    pairs = []
    for rec in records:
        phrases = rec["sentf"].get("vg", [])
        kept = [p for p in phrases if not has_verb(p)]
        counts.update(total=len(phrases), kept=len(kept), verb=len(phrases) - len(kept))
        texts = phrase_descriptions(kept, int(opts["phrases_per_image"]), ds.phrase_rng(rec["img_id"]),
                                    int(opts["min_phrases"]), int(opts["max_phrases"]))
        pairs += [(rec["img_id"], text) for text in texts]
    return pairs, counts


def answer_view(ds: LxmertData, task: str, files: list[Path], union: StoreUnion, split: str,
                where: str) -> tuple[ExampleSource, str]:
    """VQA or GQA questions over that task's answer table; answers outside it are counted, dropped and
    reported."""
    option = "answer_table" if task == "vqa" else f"{task}_answer_table"
    answers = ds.answers(task)
    if answers is None:
        raise MMCoreError(f"dataset 'lxmert': the {task.upper()} answer table {ds.path(ds.options[option])} is "
                          f"missing (option {option})")
    read = ann.read_vqa if task == "vqa" else ann.read_gqa
    entries = [(path, i, rec["img_id"], rec) for path in files for i, rec in enumerate(read(path))]
    records = present(ds, entries, union, f"{task}/{split}")
    if ds.holds_out(task, split):
        records, where = hold_out(ds, records, split, where)
    removed, emptied = ann.drop_unknown_answers(records, answers)
    if removed:
        ds._warn(f"lxmert {task}/{split}: skipped {n(removed, 'answer')} not in the {len(answers):,}-answer table; "
                 f"{n(emptied, 'question')} left with no answer (target all zero)")
    # GQA's question ids are strings, VQA's integers.
    view = AnswerView(records, answers, union, target_field=f"{task}_target",  # type: ignore[arg-type]
                      question_id_type=int if task == "vqa" else str)
    return view, f"{n(len(view), 'question')} about {n(len(view.image_ids()), 'image')} {where}"


def hold_out(ds: LxmertData, records: list[dict[str, Any]], split: str, where: str) -> tuple[list[dict[str, Any]], str]:
    """The questions of the held-out images (``val``) or of the others (``train``), and the summary's source."""
    images = [rec["img_id"] for rec in records]
    held = held_out_images(images, float(ds.options["vqa_holdout"]), int(ds.options["seed"]))
    if len(held) == len(set(images)):
        raise MMCoreError(f"dataset 'lxmert': vqa_holdout {ds.options['vqa_holdout']} holds out every one of the "
                          f"{len(held)} images of vqa_train; lower it, or list selection files in vqa_val")
    kept = [rec for rec in records if (rec["img_id"] in held) == (split == "val")]
    detail = (f"held out {where} (vqa_holdout {ds.options['vqa_holdout']}, seed {ds.options['seed']})" if split == "val"
              else f"{where}, without the {n(len(held), 'image')} held out for val")
    return kept, detail


def nlvr2_view(ds: LxmertData, files: list[Path], union: StoreUnion, split: str,
               where: str) -> tuple[ExampleSource, str]:
    """NLVR2 statements; a statement needs both of its images in the family's stores."""
    entries = [(path, i, (rec["img0"], rec["img1"]), rec) for path in files
               for i, rec in enumerate(ann.read_nlvr2(path))]
    records = present(ds, entries, union, f"nlvr2/{split}")
    view = TwoImageView(records, union, label_field="nlvr2_label")  # type: ignore[arg-type]
    true = sum(rec["label"] == 1 for rec in records)
    return view, (f"{n(len(view), 'statement')} ({true:,} true) about {n(len(view.image_ids()), 'image')} "
                  f"{where}")


def retrieval_view(ds: LxmertData, files: list[Path], union: StoreUnion, split: str,
                   where: str) -> tuple[ExampleSource, str]:
    """Flickr30k-style images with their captions."""
    entries: list[Entry[tuple[str, list[str]]]] = []
    for path in files:
        for i, (img_id, captions) in enumerate(ann.read_retrieval(path)):
            # Features may be keyed by the file name with or without its extension.
            if img_id not in union and f"{img_id}.jpg" in union:
                img_id = f"{img_id}.jpg"
            entries.append((path, i, img_id, (img_id, captions)))
    items = present(ds, entries, union, f"retrieval/{split}")
    hard = ds.hard_negatives("retrieval_hard_negatives") if split == "train" else None
    view = CaptionRankingView(items, union, hard)  # type: ignore[arg-type]
    return view, f"{n(len(view.images), 'image')}, {n(len(view.captions), 'caption')} {where}"
