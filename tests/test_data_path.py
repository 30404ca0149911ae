"""The feature caches (disk, ram, gpu) give identical batches; disk works in worker processes; texts are
tokenised once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from mmcore_synth.dataset import SynthWorld
from torch.utils.data import DataLoader

from mmcore.api import Batch
from mmcore.data.collate import Collator, to_device
from mmcore.errors import MMCoreError
from mmcore.plugins import load_plugins
from mmcore.training import EpochSampler, MixedExamples, PrepareCollate

WORLD = {"train_images": 24, "val_images": 4, "test_images": 4, "vqa_train_images": 8, "retrieval_train_images": 8,
         "gqa_train_images": 8, "nlvr2_train_pairs": 8, "max_regions": 6, "feature_dim": 16, "hard_negatives_top": 5,
         "hard_negative_pool": "train"}
MODES = ("disk", "ram", "gpu")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("worlds")
    SynthWorld(dict(WORLD), path).prepare()
    return path


def world(cache_dir: Path, mode: str) -> SynthWorld:
    return SynthWorld({**WORLD, "features_cache": mode}, cache_dir)


def stage_batches(data: SynthWorld, epochs: int = 1) -> list[Batch]:
    """A sentence-stage loader's batches (ITM_HS swaps images on the CPU), corrupted by MLM/MRFR/MOC on the device."""
    registry = load_plugins().registry
    info = data.info()
    torch.manual_seed(0)
    backbone = registry.get("backbone", "lxmert_s").factory(
        {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "x_layers": 1}, info)
    tasks = [registry.get("task", name).factory(info, backbone) for name in ("itm_hs", "mlm", "mrfr", "moc")]
    mixed = MixedExamples([data.view("sentence", "train")], [None])
    sampler = EpochSampler(mixed, [1.0], seed=5)
    collate = PrepareCollate([lambda ex, src, rng, t=tasks[0]: [t.prepare(ex, src, rng)]],
                             Collator(data.tokenizer(), 12), seed=5)
    loader = DataLoader(mixed, batch_size=8, sampler=sampler, collate_fn=collate)
    generator = torch.Generator().manual_seed(9)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        collate.set_epoch(epoch)
        for batch in loader:
            batch = to_device(batch, torch.device("cpu"))
            for task in tasks[1:]:
                task.corrupt(batch, generator)
            out.append(batch)
    return out


def test_every_cache_mode_gives_bit_identical_batches(cache_dir: Path) -> None:
    batches = {mode: stage_batches(world(cache_dir, mode)) for mode in MODES}
    reference = batches["ram"]
    assert len(reference) == 15  # 24 images × 5 captions, batches of 8
    # ITM_HS swapped some images: the comparison covers fields copied from another image in prepare.
    assert 0 < sum(int((b["itm_label"] == 0).sum()) for b in reference) < 120
    for mode in ("disk", "gpu"):
        for got, want in zip(batches[mode], reference, strict=True):
            assert set(got) == set(want)
            for key, value in want.items():
                if isinstance(value, torch.Tensor):
                    assert got[key].dtype == value.dtype, (mode, key)
                    assert torch.equal(got[key], value), (mode, key)
                else:
                    assert got[key] == value, (mode, key)
    first = reference[0]
    assert first["visual_feats"].dtype == torch.float32 and first["visual_mask"].dtype == torch.long
    assert bool(first["region_mask"].any()) and bool((first["mlm_labels"] != -100).any())


def test_gpu_cache_examples_hold_row_references(cache_dir: Path) -> None:
    view = world(cache_dir, "gpu").view("token", "train")
    example = view[0]
    assert not any(isinstance(v, torch.Tensor | type(None)) for v in example.values())
    batch = Collator(world(cache_dir, "gpu").tokenizer(), 12)([view[0], view[1]])
    assert "visual_feats" in batch and not isinstance(batch["visual_feats"], torch.Tensor)
    moved = to_device(batch, torch.device("cpu"))
    ram = world(cache_dir, "ram").view("token", "train")
    assert torch.equal(moved["visual_feats"][1], torch.from_numpy(ram[1]["visual_feats"]))
    assert moved["visual_mask"][0].tolist() == ram[0]["visual_mask"].tolist()


class _WithPid(torch.utils.data.Dataset):
    """Each item records the process that read it and whether the store's handle belongs to that process."""

    def __init__(self, mixed: MixedExamples, store: Any) -> None:
        self.mixed, self.store = mixed, store

    def __len__(self) -> int:
        return len(self.mixed)

    def __getitem__(self, index: int) -> Any:
        example, source = self.mixed[index]
        own = self.store._pid == os.getpid() and self.store._handle is not None
        return {**example, "reader_pid": os.getpid(), "own_handle": own}, source


def test_disk_cache_with_two_workers(cache_dir: Path) -> None:
    disk, ram = world(cache_dir, "disk"), world(cache_dir, "ram")
    batches = {}
    for name, data, workers in (("disk", disk, 2), ("ram", ram, 0)):
        mixed = MixedExamples([data.view("token", "train")], [None])
        loader = DataLoader(_WithPid(mixed, data.store()), batch_size=6, shuffle=False, num_workers=workers,
                            collate_fn=PrepareCollate([], Collator(data.tokenizer(), 12), seed=0))
        batches[name] = list(loader)
    # Building the token view read labels here, so the parent holds a handle too: the workers must not use it.
    assert disk.store().cache == "disk" and disk.store()._pid == os.getpid()
    pids = {pid for b in batches["disk"] for pid in b["reader_pid"].tolist()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(bool(b["own_handle"].all()) for b in batches["disk"])
    for got, want in zip(batches["disk"], batches["ram"], strict=True):
        for key in ("input_ids", "visual_feats", "visual_pos", "visual_mask", "obj_labels", "attr_conf"):
            assert torch.equal(got[key], want[key]), key


class _CountingTokenizer:
    """Forwards to a tokenizer and counts each text it is asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.counts = inner, {}
        self.pad_token_id, self.padding_side = inner.pad_token_id, inner.padding_side

    def __call__(self, texts: list[str], **kwargs: Any) -> Any:
        for text in texts:
            self.counts[text] = self.counts.get(text, 0) + 1
        return self.inner(texts, **kwargs)


def test_texts_are_tokenised_once_across_epochs(cache_dir: Path) -> None:
    data = world(cache_dir, "ram")
    view = data.view("sentence", "train")
    tokenizer = _CountingTokenizer(data.tokenizer())
    collator = Collator(tokenizer, 12)
    mixed = MixedExamples([view], [None])
    sampler = EpochSampler(mixed, [1.0], seed=1)
    loader = DataLoader(mixed, batch_size=7, sampler=sampler, collate_fn=PrepareCollate([], collator, seed=1))
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen.extend(batch for batch in loader)
    texts = {text for _, text in view.pairs}
    assert set(tokenizer.counts) == texts and set(tokenizer.counts.values()) == {1}
    # The cached, re-padded ids equal what the tokenizer gives for the batch as a whole.
    examples = [view[i] for i in range(5)]
    batch = Collator(data.tokenizer(), 12)(examples)
    enc = data.tokenizer()([e["text"] for e in examples], padding="longest", truncation=True, max_length=12)
    assert batch["input_ids"].tolist() == enc["input_ids"]
    assert batch["attention_mask"].tolist() == enc["attention_mask"]
    assert batch["position_ids"][0, :3].tolist() == [1, 2, 3]  # [CLS] then the first words


def test_unknown_cache_mode_is_a_clear_error(cache_dir: Path) -> None:
    with pytest.raises(MMCoreError, match="features_cache must be one of disk, ram, gpu"):
        SynthWorld({**WORLD, "features_cache": "vram"}, cache_dir)
