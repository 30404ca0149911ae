"""Generate a synthworld into a directory, in the real formats (feature store, LXMERT/VQA/Flickr JSON, ...).

Files written (all through mmcore's core writers, so the readers real data uses read them back):

- ``features.h5``: the feature store of every image (train, then val, then test)
- ``objects_vocab.txt``, ``attributes_vocab.txt``: detector vocabularies
- ``pretrain_{train,val}.json``: LXMERT pre-training records, sources ``mscoco`` (captions) and ``vg`` (raw
  region phrases, verb phrases included)
- ``vqa_{train,val,test}.json``, ``trainval_ans2label.json``, ``trainval_label2ans.json``
- ``retrieval_{train,val,test}.json``: Flickr30k style
- ``gqa_{train,val,test}.json`` (GQA JSON) and its answer table ``gqa_trainval_ans2label.json``
- ``nlvr2_{train,val,test}.json``: NLVR2 JSON, one statement per image pair
- ``hard_negatives.npz`` (over train images), ``retrieval_hard_negatives.npz`` (over retrieval train images)
- ``vocab.txt``: the WordPiece vocabulary; ``world.json``: the options and generator version
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmcore.data import annotations as ann
from mmcore.data.fileio import write_json
from mmcore.data.hardneg import nearest_images, save_hard_negatives
from mmcore.data.store import FeatureStore, write_feature_store
from mmcore.data.tokenizer import build_wordpiece
from mmcore_synth.features import encode_scenes
from mmcore_synth.language import captions, vg_phrases, vqa_questions
from mmcore_synth.reasoning import gqa_questions, nlvr2_pairs, nlvr2_statement
from mmcore_synth.world import ATTRIBUTES, OBJECT_NAMES, VERBS, Scene, sample_scene

# Bump when the generated data changes for the same options, so old caches are not reused.
GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")
_MAX_QUESTIONS = 100  # question ids are image_index * 100 + k
GQA_ANSWERS = "gqa_trainval_ans2label.json"
NLVR2_EVAL_PAIRS_PER_IMAGE = 2  # val/test NLVR2 pairs per image of the split


def image_ids(options: dict[str, Any]) -> dict[str, list[str]]:
    """The image ids of each split."""
    return {split: [f"synth_{split}_{i:05d}" for i in range(int(options[f"{split}_images"]))] for split in SPLITS}


def downstream_train_ids(options: dict[str, Any], train: list[str]) -> tuple[list[str], list[str]]:
    """The train images of VQA (the first ones) and of retrieval (the last ones; disjoint when both fit)."""
    vqa = train[: min(len(train), int(options["vqa_train_images"]))]
    n_ret = min(len(train), int(options["retrieval_train_images"]))
    return vqa, train[len(train) - n_ret :]


def _rng(seed: int, img_id: str, purpose: str) -> random.Random:
    # One stream per image and purpose: changing e.g. questions_per_image leaves every caption unchanged.
    return random.Random(f"{seed}:{img_id}:{purpose}")


def generate(options: dict[str, Any], directory: Path, progress: Callable[[str], None] | None = None) -> None:
    """Write the whole world for ``options`` into ``directory`` (which must exist and be empty)."""
    say = progress or (lambda message: None)
    seed = int(options["seed"])
    if int(options["questions_per_image"]) > _MAX_QUESTIONS:
        raise ValueError(f"questions_per_image must be at most {_MAX_QUESTIONS}")
    ids = image_ids(options)
    every = [img for split in SPLITS for img in ids[split]]
    say(f"synthworld: sampling {len(every)} scenes")
    scenes = {img: sample_scene(_rng(seed, img, "scene"), img, int(options["max_regions"])) for img in every}

    say("synthworld: region features and detections")
    enc = encode_scenes([scenes[i] for i in every], seed, int(options["feature_dim"]), int(options["max_regions"]),
                        float(options["feature_noise"]), float(options["nuisance"]),
                        float(options["label_accuracy"]), float(options["attr_accuracy"]))
    write_feature_store(directory / "features.h5", every, enc.features, enc.boxes, enc.num_boxes, enc.obj_ids,
                        enc.obj_conf, enc.attr_ids, enc.attr_conf)
    del enc
    ann.write_vocab_txt(directory / "objects_vocab.txt", list(OBJECT_NAMES))
    ann.write_vocab_txt(directory / "attributes_vocab.txt", list(ATTRIBUTES))

    say("synthworld: captions, phrases, questions")
    texts: list[str] = list(OBJECT_NAMES) + list(ATTRIBUTES)
    for split in ("train", "val"):
        records = [_pretrain_record(scenes[img], seed, int(options["captions_per_image"])) for img in ids[split]]
        ann.write_pretrain(directory / f"pretrain_{split}.json", records)
        texts += [s for r in records for sents in r["sentf"].values() for s in sents]

    vqa_train, retrieval_train = downstream_train_ids(options, ids["train"])
    position = {img: i for i, img in enumerate(every)}
    vqa_split = {"train": vqa_train, "val": ids["val"], "test": ids["test"]}
    answers: Counter[str] = Counter()
    for split, imgs in vqa_split.items():
        records = [q for img in imgs for q in vqa_questions(scenes[img], _rng(seed, img, "vqa"),
                                                             int(options["questions_per_image"]),
                                                             position[img] * _MAX_QUESTIONS)]
        ann.write_vqa(directory / f"vqa_{split}.json", records)
        texts += [r["sent"] for r in records]
        if split != "test":  # the answer table comes from train + val, as VQA's trainval table does
            answers.update(a for r in records for a in r["label"])
    table = sorted(answers, key=lambda a: (-answers[a], a))
    ann.write_answer_table(directory, table)
    texts += table

    reasoning_texts = _write_gqa_nlvr2(directory, options, ids, scenes, position)

    retrieval_split = {"train": retrieval_train, "val": ids["val"], "test": ids["test"]}
    for split, imgs in retrieval_split.items():
        items = [(img, captions(scenes[img], _rng(seed, img, "retrieval"), 5, identifying=True)) for img in imgs]
        ann.write_retrieval(directory / f"retrieval_{split}.json", items)
        texts += [c for _, caps in items for c in caps]

    say("synthworld: hard negatives and vocabulary")
    store = FeatureStore(directory / "features.h5", in_memory=False)
    pooled = store.mean_pooled()
    top = int(options["hard_negatives_top"])
    for name, imgs in (("hard_negatives.npz", ids["train"]), ("retrieval_hard_negatives.npz", retrieval_train)):
        rows = [store.index(i) for i in imgs]
        save_hard_negatives(directory / name, imgs, nearest_images(pooled[rows], top))
    store.close()
    build_wordpiece(texts, directory, int(options["vocab_size"]),
                    required=[*OBJECT_NAMES, *ATTRIBUTES, *_words(reasoning_texts)])
    write_json(directory / "world.json", {"generator_version": GENERATOR_VERSION, "options": options,
                                          "verbs": sorted(VERBS)})


def _write_gqa_nlvr2(directory: Path, options: dict[str, Any], ids: dict[str, list[str]], scenes: dict[str, Scene],
                     position: dict[str, int]) -> list[str]:
    """Write the GQA and NLVR2 files; returns their texts."""
    seed, texts = int(options["seed"]), []
    gqa_split = {"train": ids["train"][: int(options["gqa_train_images"])], "val": ids["val"], "test": ids["test"]}
    answers: Counter[str] = Counter()
    for split, imgs in gqa_split.items():
        records = [q for img in imgs for q in gqa_questions(scenes[img], _rng(seed, img, "gqa"),
                                                             int(options["questions_per_image"]),
                                                             position[img] * _MAX_QUESTIONS)]
        ann.write_gqa(directory / f"gqa_{split}.json", records)
        texts += [r["sent"] for r in records]
        if split != "test":
            answers.update(a for r in records for a in r["label"])
    ann.write_answer_file(directory / GQA_ANSWERS, sorted(answers, key=lambda a: (-answers[a], a)))
    for split, imgs in ids.items():
        count = int(options["nlvr2_train_pairs"]) if split == "train" else NLVR2_EVAL_PAIRS_PER_IMAGE * len(imgs)
        records = []
        for k, (left, right) in enumerate(nlvr2_pairs(imgs, count, random.Random(f"{seed}:{split}:nlvr2-pairs"))):
            sent, true = nlvr2_statement(scenes[left], scenes[right], _rng(seed, f"{left}+{right}", "nlvr2"))
            records.append({"identifier": f"{split}-{k}-0", "img0": left, "img1": right, "label": int(true),
                            "sent": sent, "uid": f"nlvr2_{split}_{k}"})
        ann.write_nlvr2(directory / f"nlvr2_{split}.json", records)
        texts += [r["sent"] for r in records]
    return texts


def _words(texts: list[str]) -> list[str]:
    """The distinct words and punctuation marks of ``texts`` (the pre-tokenizer's split of this plain text).

    They join the vocabulary as required words rather than as corpus text: words the other views use keep
    their ids and order, and the new ones follow them.
    """
    return sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})


def _pretrain_record(scene: Scene, seed: int, num_captions: int) -> dict[str, Any]:
    sentf = {
        "mscoco": captions(scene, _rng(seed, scene.img_id, "captions"), num_captions),
        "vg": vg_phrases(scene, _rng(seed, scene.img_id, "vg")),
    }
    return {"img_id": scene.img_id, "sentf": sentf, "labelf": {}}
