"""The synthworld dataset: determinism, views and their fields, phrases, vocabulary, VQA scores, cache."""

from __future__ import annotations

import random
from pathlib import Path

import h5py
import numpy as np
import pytest
from mmcore_synth import dataset as synth_dataset
from mmcore_synth.dataset import SynthWorld
from mmcore_synth.world import VERBS

from mmcore.api import TEXT_FIELDS, ExampleSource
from mmcore.data.annotations import read_pretrain, read_vqa, vqa_soft_score
from mmcore.data.collate import Collator
from mmcore.data.hardneg import load_hard_negatives
from mmcore.data.views import remove_verb_phrases
from mmcore.errors import MMCoreError
from mmcore.registry import Registry

SMALL = {"train_images": 60, "val_images": 12, "test_images": 12, "vqa_train_images": 20,
         "retrieval_train_images": 15, "feature_dim": 32, "max_regions": 12, "hard_negatives_top": 10}
SPLITS = {"token": ("train", "val"), "phrase": ("train", "val"), "sentence": ("train", "val"),
          "vqa": ("train", "val", "test"), "retrieval": ("train", "val", "test")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> SynthWorld:
    ds = SynthWorld(SMALL, tmp_path_factory.mktemp("cache"))
    ds.prepare()
    return ds


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes, except the HDF5 file (compared by content: its metadata may hold timestamps)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix != ".h5"}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}


def test_deterministic_given_seed(world: SynthWorld, tmp_path: Path) -> None:
    again = SynthWorld(SMALL, tmp_path / "other")
    again.prepare()
    assert again.directory.name == world.directory.name
    assert _snapshot(again.directory) == _snapshot(world.directory)
    a, b = _arrays(again.directory / "features.h5"), _arrays(world.directory / "features.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    other_seed = SynthWorld({**SMALL, "seed": 1}, tmp_path / "other")
    other_seed.prepare()
    assert other_seed.directory != again.directory
    assert not np.array_equal(_arrays(other_seed.directory / "features.h5")["features"], a["features"])


def test_files_in_the_real_formats(world: SynthWorld) -> None:
    names = {p.name for p in world.directory.iterdir()}
    expected = {"features.h5", "pretrain_train.json", "pretrain_val.json", "vqa_train.json", "vqa_val.json",
                "vqa_test.json", "trainval_ans2label.json", "trainval_label2ans.json", "retrieval_train.json",
                "retrieval_val.json", "retrieval_test.json", "objects_vocab.txt", "attributes_vocab.txt",
                "hard_negatives.npz", "retrieval_hard_negatives.npz", "vocab.txt", "world.json"}
    assert expected <= names and not any(n.endswith(".tmp") for n in names)
    record = read_pretrain(world.directory / "pretrain_train.json")[0]
    assert set(record["sentf"]) == {"mscoco", "vg"} and len(record["sentf"]["mscoco"]) == 5


@pytest.mark.parametrize("name", list(SPLITS))
def test_views_provide_declared_fields(world: SynthWorld, name: str) -> None:
    info = world.info()
    o, f = SMALL["max_regions"], SMALL["feature_dim"]
    collate = Collator(world.tokenizer())
    for split in SPLITS[name]:
        view = world.view(name, split)
        assert isinstance(view, ExampleSource) and len(view) > 0
        examples = [view[i] for i in range(min(4, len(view)))]
        for ex in examples:
            assert (SynthWorld.views[name] - TEXT_FIELDS) | {"text"} <= set(ex), (name, split)
            assert ex["visual_feats"].shape == (o, f) and ex["visual_feats"].dtype == np.float32
            assert ex["visual_pos"].shape == (o, 4) and ex["visual_mask"].shape == (o,)
            for key in ("obj_labels", "attr_labels"):
                assert ex[key].shape == (o,) and ex[key].dtype == np.int64
            assert ((ex["visual_pos"] >= 0) & (ex["visual_pos"] <= 1)).all()
            assert ex["obj_labels"].max() < info.num_objects and ex["attr_labels"].max() < info.num_attributes
            assert ex["visual_mask"].sum() >= 0.75 * o
        batch = collate(examples)
        assert SynthWorld.views[name] <= set(batch), (name, split)
        assert batch["visual_feats"].shape == (len(examples), o, f)
        if name == "vqa":
            assert batch["vqa_target"].shape == (len(examples), len(info.answers["vqa"]))
            assert isinstance(examples[0]["question_id"], int)
        if name == "retrieval":
            assert batch["caption_index"].tolist() == list(range(len(examples)))
    with pytest.raises(MMCoreError):
        world.view(name, "nosuchsplit")


def test_pretraining_views_have_no_test_split(world: SynthWorld) -> None:
    with pytest.raises(MMCoreError, match="train and val only"):
        world.view("sentence", "test")
    with pytest.raises(MMCoreError, match="no view 'vcr'"):
        world.view("vcr", "train")


def test_token_view_is_the_detector_labels(world: SynthWorld) -> None:
    view = world.view("token", "train")
    names = world.info().object_names
    for i in (0, 5):
        ex = view[i]
        labels = ex["obj_labels"][ex["visual_mask"] == 1]
        assert ex["text"] == " ".join(names[j] for j in labels)


def test_pair_ratios_follow_the_paper(world: SynthWorld) -> None:
    token, phrase, sentence = (len(world.view(v, "train")) for v in ("token", "phrase", "sentence"))
    assert token == SMALL["train_images"] and sentence == 5 * token
    assert 2.5 * token <= phrase <= 3 * token


def test_verb_phrases_are_in_raw_vg_but_not_in_the_phrase_view(world: SynthWorld) -> None:
    raw = [p for r in read_pretrain(world.directory / "pretrain_train.json") for p in r["sentf"]["vg"]]
    with_verbs = [p for p in raw if any(w in VERBS for w in p.split())]
    assert len(with_verbs) >= 10, "the raw vg data should contain verb phrases"
    assert remove_verb_phrases(with_verbs, VERBS.__contains__) == []
    view = world.view("phrase", "train")
    for img_id, text in view.pairs:
        assert not any(w in VERBS for w in text.replace(",", " ").split()), text
    assert any(", " in text for _, text in view.pairs)


def test_remove_verb_phrases_keeps_the_rest() -> None:
    phrases = ["man riding horse", "red car", "dog sitting on grass", "wooden table"]
    assert remove_verb_phrases(phrases, {"riding", "sitting"}.__contains__) == ["red car", "wooden table"]


def test_object_and_attribute_names_are_single_tokens(world: SynthWorld) -> None:
    tok, info = world.tokenizer(), world.info()
    vocab = tok.get_vocab()
    assert vocab["[PAD]"] == 0 and info.pad_token_id == 0
    assert len(info.object_names) >= 40 and len(info.attribute_names) == 15
    for name in info.object_names + info.attribute_names:
        assert tok.tokenize(name) == [name], name
    assert info.object_token_ids == tuple((vocab[n],) for n in info.object_names)
    assert info.vocab_size == len(tok) and set(info.special_token_ids) >= {0, info.mask_token_id}


def test_vqa_soft_scores_follow_the_rule(world: SynthWorld) -> None:
    assert [vqa_soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    votes_of = {0.3: 1, 0.6: 2, 0.9: 3, 1.0: 4}
    answers = world.info().answers["vqa"]
    types = set()
    for split in ("train", "val", "test"):
        records = read_vqa(world.directory / f"vqa_{split}.json")
        assert len({r["question_id"] for r in records}) == len(records)
        for rec in records:
            types.add(rec["question_type"])
            assert set(rec["label"].values()) <= set(votes_of)
            assert max(rec["label"].values()) >= 0.6  # the majority agrees on something
            assert sum(votes_of[s] for s in rec["label"].values()) <= 10  # at most 10 annotators
    assert {"what color is the", "how many", "is there a", "what is"} <= types
    view = world.view("vqa", "train")
    ex = view[0]
    for answer, score in view.labels[0].items():
        assert ex["vqa_target"][answers.index(answer)] == pytest.approx(score)
    assert ex["vqa_target"].sum() == pytest.approx(sum(view.labels[0].values()))


def test_retrieval_has_five_captions_per_image(world: SynthWorld) -> None:
    for split, n in (("train", SMALL["retrieval_train_images"]), ("test", SMALL["test_images"])):
        view = world.view("retrieval", split)
        assert len(view.images) == n and len(view.captions) == 5 * n == len(view)
        for img_id in view.images:
            assert len(view.captions_of(img_id)) == 5
        ex = view[7]
        assert view.caption_image[7] == ex["image_index"] == 1 and view.images[1] == ex["img_id"]
        assert ex["text"] in view.captions_of(ex["img_id"])
    assert not set(world.view("retrieval", "test").images) & set(world.view("sentence", "train").image_ids())


def test_hard_negatives_exclude_self(world: SynthWorld) -> None:
    hard = load_hard_negatives(world.directory / "hard_negatives.npz")
    assert len(hard) == SMALL["train_images"]
    assert all(img not in near and len(near) == SMALL["hard_negatives_top"] for img, near in hard.items())
    retrieval = world.view("retrieval", "train")
    near = retrieval.hard_negatives(retrieval.images[0])
    assert near and set(near) <= set(retrieval.images) and retrieval.images[0] not in near
    assert world.view("sentence", "val").hard_negatives(world.view("sentence", "val").image_ids()[0]) == []


def test_hard_negative_pool_retrieval_covers_only_the_retrieval_images(world: SynthWorld) -> None:
    # As ViLBERT's difficult-sample file covers only Flickr30k: retrieval train images have hard negatives
    # (among themselves), every other pre-training image has none, so ITM_HS draws a random one for it.
    pool = SynthWorld({**SMALL, "hard_negative_pool": "retrieval"}, world.cache_dir)
    assert pool.directory == world.directory  # a view option: the generated world is shared
    view = pool.view("sentence", "train")
    retrieval_images = set(world.view("retrieval", "train").images)
    for img_id in view.image_ids():
        near = view.hard_negatives(img_id)
        if img_id in retrieval_images:
            assert near and img_id not in near and set(near) <= retrieval_images
        else:
            assert near == []


def test_hard_negatives_cover_every_pretraining_image_by_default(world: SynthWorld) -> None:
    view = world.view("sentence", "train")
    for img_id in view.image_ids():
        near = view.hard_negatives(img_id)
        assert len(near) == SMALL["hard_negatives_top"] and img_id not in near and set(near) <= set(view.image_ids())
    with pytest.raises(MMCoreError, match="hard_negative_pool must be one of retrieval, train, got 'all'"):
        SynthWorld({**SMALL, "hard_negative_pool": "all"}, world.cache_dir)


def test_random_text_is_from_another_image(world: SynthWorld) -> None:
    view = world.view("sentence", "train")
    rng = random.Random(0)
    own = set(view.pairs[i][1] for i in range(5))
    img = view.pairs[0][0]
    assert all(view.random_text(rng, img) not in own for _ in range(50))


def test_second_prepare_reuses_the_cache(world: SynthWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = (world.directory / "features.h5").stat().st_mtime_ns

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare() regenerated a cached world")

    monkeypatch.setattr(synth_dataset, "generate", refuse)
    # View-time options do not change the cache key.
    again = SynthWorld({**SMALL, "phrases_per_image": 2}, world.cache_dir)
    again.prepare()
    assert again.directory == world.directory
    assert (world.directory / "features.h5").stat().st_mtime_ns == stamp
    assert len(again.view("phrase", "train")) <= 2 * SMALL["train_images"]


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(MMCoreError, match="unknown option"):
        SynthWorld({"train_imgs": 3}, tmp_path)
    with pytest.raises(MMCoreError, match="label_accuracy"):
        SynthWorld({"label_accuracy": 1.5}, tmp_path)


def test_registered_by_the_plugin() -> None:
    from mmcore_synth.plugin import mmcore_register_datasets

    registry = Registry()
    mmcore_register_datasets(registry)
    entry = registry.get("dataset", "synthworld")
    assert entry.factory is SynthWorld and {"vqa_target", "question_id"} <= entry.provides["vqa"]


def test_every_action_contains_a_known_verb() -> None:
    from mmcore_synth.world import ACTIONS, ATTRIBUTES, OBJECT_NAMES

    assert all(any(w in VERBS for w in verb.split()) for _, verb, _ in ACTIONS)
    assert not VERBS & (set(OBJECT_NAMES) | set(ATTRIBUTES))
