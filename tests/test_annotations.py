"""Annotation formats, the WordPiece builder and the generic views' helpers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from mmcore.data import annotations as ann
from mmcore.data.store import FeatureStore, write_feature_store
from mmcore.data.tokenizer import build_wordpiece, load_tokenizer
from mmcore.data.views import PairView, join_phrases, phrase_descriptions
from mmcore.errors import MMCoreError


def test_lxmert_vocab_takes_the_first_name(tmp_path: Path) -> None:
    path = tmp_path / "objects_vocab.txt"
    path.write_text("yolk\ntoilet tissue,toilet paper\nbarrier,barricade\n\n")
    assert ann.read_vocab_txt(path) == ["yolk", "toilet tissue", "barrier"]
    ann.write_vocab_txt(tmp_path / "out.txt", ["dog", "cat"])
    assert ann.read_vocab_txt(tmp_path / "out.txt") == ["dog", "cat"]
    with pytest.raises(MMCoreError):
        ann.write_vocab_txt(tmp_path / "bad.txt", ["a,b"])


def test_json_formats_round_trip(tmp_path: Path) -> None:
    records = [{"img_id": "COCO_val2014_000000000042", "sentf": {"mscoco": ["a dog"], "vqa": ["what?"]},
                "labelf": {"vqa": [{"dog": 1.0}]}}]
    ann.write_pretrain(tmp_path / "p.json", records)
    assert ann.read_pretrain(tmp_path / "p.json") == records
    assert ann.pretrain_sentences(records, "mscoco") == [("COCO_val2014_000000000042", "a dog")]
    vqa = [{"answer_type": "other", "img_id": "x", "label": {"red": 0.6}, "question_id": 7,
            "question_type": "what color is the", "sent": "what color is the car?"}]
    ann.write_vqa(tmp_path / "v.json", vqa)
    assert ann.read_vqa(tmp_path / "v.json") == vqa
    ann.write_answer_table(tmp_path, ["yes", "no", "red"])
    assert json.loads((tmp_path / ann.ANS2LABEL).read_text()) == {"yes": 0, "no": 1, "red": 2}
    assert ann.read_answer_table(tmp_path) == ["yes", "no", "red"]
    ann.write_retrieval(tmp_path / "r.json", [("1000092795", ["c1", "c2"])])
    assert json.loads((tmp_path / "r.json").read_text()) == [{"img_path": "1000092795.jpg", "sentences": ["c1", "c2"]}]
    assert ann.read_retrieval(tmp_path / "r.json") == [("1000092795", ["c1", "c2"])]
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(MMCoreError, match="not valid JSON"):
        ann.read_vqa(tmp_path / "broken.json")


def test_wordpiece_closed_vocabulary_is_deterministic(tmp_path: Path) -> None:
    texts = ["A small red dog, left of the table?", "two dogs and a table"]
    first = build_wordpiece(texts, tmp_path / "a", 200, required=["giraffe"]).read_text()
    assert build_wordpiece(texts, tmp_path / "b", 200, required=["giraffe"]).read_text() == first
    tok = load_tokenizer(tmp_path / "a")
    assert first.splitlines()[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.tokenize("Giraffe dogs") == ["giraffe", "dogs"]
    assert tok("a dog")["input_ids"][0] == tok.cls_token_id


def test_wordpiece_learns_subwords_when_words_do_not_fit(tmp_path: Path) -> None:
    words = [f"w{a}{b}{c}" for a in "abcdefgh" for b in "ijklmnop" for c in "qrstuvwx"]
    build_wordpiece([" ".join(words)] * 3, tmp_path, 120, required=["zebra"])
    tok = load_tokenizer(tmp_path)
    assert tok.tokenize("zebra") == ["zebra"]
    assert tok.unk_token not in tok.tokenize("wajq waaq")  # every character is covered


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MMCoreError, match="no tokenizer found"):
        load_tokenizer(tmp_path)


def test_phrase_descriptions() -> None:
    phrases = ["red car", "blue sky", "wooden table", "small dog", "white cup", "green grass"]
    out = phrase_descriptions(phrases, 3, random.Random(0))
    assert len(out) == len(set(out)) == 3
    for text in out:
        parts = text.split(", ")
        assert 3 <= len(parts) <= 5 and set(parts) <= set(phrases)
    assert phrase_descriptions(["a b"], 3, random.Random(0)) == ["a b"]
    assert join_phrases(["red car", " ", "blue sky"]) == "red car, blue sky"


def test_pair_view_checks_images_and_draws_other_texts(tmp_path: Path) -> None:
    n, o, f = 2, 3, 4
    zeros = np.zeros((n, o))
    store = FeatureStore(write_feature_store(tmp_path / "s.h5", ["a", "b"], np.ones((n, o, f)),
                                             np.zeros((n, o, 4)), np.array([3, 3]), zeros, zeros, zeros, zeros))
    view = PairView([("a", "t1"), ("a", "t2"), ("b", "t3")], store, extra=[{"k": 1}, {"k": 2}, {"k": 3}])
    assert view[1]["k"] == 2 and view[1]["text"] == "t2" and view.image_ids() == ["a", "b"]
    assert {view.random_text(random.Random(i), "a") for i in range(20)} == {"t3"}
    assert view.hard_negatives("a") == []
    with pytest.raises(MMCoreError, match="not in the feature store"):
        PairView([("zzz", "t")], store)
    with pytest.raises(MMCoreError, match="belongs to image"):
        PairView([("a", "t")], store).random_text(random.Random(0), "a")
