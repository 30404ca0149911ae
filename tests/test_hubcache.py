"""Tokenizers and weights named by a Hub id are read from the local Hugging Face cache, offline, never downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmcore.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from mmcore.errors import MMCoreError
from mmcore.plugins import load_plugins
from tests.test_lxmert_weights import FEAT, S_SHAPE, VOCAB, batch, ours, randomise_

pytest.importorskip("huggingface_hub")


def cache_model(hub: Path, repo_id: str, source: Path) -> Path:
    """Lay ``source``'s files out as the Hub cache holds a downloaded model: blobs behind refs/main and a snapshot."""
    root = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, snapshot)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(snapshot.name)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of the test's own, offline."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_tokenizer_by_hub_id_from_the_local_cache(hub, tmp_path):
    words = tmp_path / "words"
    words.mkdir()
    (words / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, "a", "red", "cube", "left", "of", "##s"]) + "\n")
    load_tokenizer(words).save_pretrained(str(tmp_path / "saved"))
    cache_model(hub, "bert-base-uncased", tmp_path / "saved")
    tokenizer = load_tokenizer("bert-base-uncased")
    assert tokenizer.convert_ids_to_tokens(tokenizer("a red cubes")["input_ids"]) == \
        ["[CLS]", "a", "red", "cube", "##s", "[SEP]"]
    with pytest.raises(MMCoreError) as info:
        load_tokenizer("acme/not-cached")
    assert "nor is 'acme/not-cached' a model in the local Hugging Face cache" in str(info.value)
    assert "mmcore never downloads" in str(info.value)


def test_backbone_weights_by_hub_id_from_the_local_cache(hub, tmp_path, monkeypatch):
    from mmcore_lxmert.weights import export_pretrained

    original = randomise_(ours(S_SHAPE, visual_cls=True, product_pooler=True), seed=4)
    export_pretrained(original, tmp_path / "export", "lxmert_s")
    cache_model(hub, "acme/tiny-lxmert-s", tmp_path / "export")
    monkeypatch.chdir(tmp_path)  # no folder called acme/ here: the name can only be the Hub id
    factory = load_plugins().registry.get("backbone", "lxmert_s").factory
    options = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "x_layers": 2,
               "max_position_embeddings": 40, "whole_word_positions": False}
    info = type("Info", (), {"vocab_size": VOCAB, "feature_dim": FEAT})()
    loaded = factory({**options, "weights": "acme/tiny-lxmert-s"}, info).eval()
    data = batch()
    with torch.no_grad():
        for mine, theirs in zip(loaded(**data), original(**data)):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    with pytest.raises(MMCoreError) as info_error:
        factory({**options, "weights": "acme/absent"}, info)
    said = str(info_error.value)
    assert "weights not found: acme/absent" in said and "local Hugging Face cache" in said


def test_data_prepare_copies_a_tokenizer_named_by_hub_id(hub, tmp_path):
    from mmcore.data.prepare import PrepareOptions, _tokenizer

    words = tmp_path / "words"
    words.mkdir()
    (words / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, "a", "dog"]) + "\n")
    load_tokenizer(words).save_pretrained(str(tmp_path / "saved"))
    cache_model(hub, "acme/wordpiece", tmp_path / "saved")
    work = tmp_path / "prepared"
    work.mkdir()
    assert _tokenizer(work, None, PrepareOptions(tokenizer=Path("acme/wordpiece"))) == "tokenizer"
    copied = load_tokenizer(work / "tokenizer")
    assert copied.convert_ids_to_tokens(copied("a dog")["input_ids"]) == ["[CLS]", "a", "dog", "[SEP]"]
    with pytest.raises(MMCoreError) as info:
        _tokenizer(tmp_path / "elsewhere", None, PrepareOptions(tokenizer=Path("acme/absent")))
    assert "--tokenizer acme/absent: not a tokenizer directory; nor is 'acme/absent' a model" in str(info.value)
