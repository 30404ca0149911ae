"""The pre-training tasks of ``mmcore_pretrain``: corruptions, targets and losses against hand computations."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from mmcore_pretrain import plugin
from mmcore_pretrain.masking import mask_regions_once
from mmcore_pretrain.tasks_masked import MLMTask, MOCTask, MRFRTask
from mmcore_pretrain.tasks_matching import ITMHardSampleTask, ITMTask
from mmcore_pretrain.tasks_shuffle import IFRSTask
from mmcore_pretrain.tasks_topic import TITPTask, TITSTask
from torch import Tensor, nn
from torch.nn import functional as F

from mmcore.api import Backbone, BackboneOutput, Batch, DataInfo, Example
from mmcore.errors import MMCoreError
from mmcore.registry import Registry

PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4
VOCAB, FEAT, HIDDEN, REGIONS = 60, 8, 16, 12
INFO = DataInfo(
    vocab_size=VOCAB, feature_dim=FEAT, max_regions=REGIONS, num_objects=6, num_attributes=4,
    pad_token_id=PAD, cls_token_id=CLS, sep_token_id=SEP, mask_token_id=MASK, unk_token_id=UNK,
    special_token_ids=(PAD, UNK, CLS, SEP, MASK),
    # object 2's name spans two WordPieces (12, 13)
    object_token_ids=((10,), (11,), (12, 13), (14,), (15,), (16,)),
)


class TinyBackbone(Backbone):
    """A few layers that look like an encoder: text and regions in, BackboneOutput out."""

    hidden_size = HIDDEN

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.visual = nn.Linear(FEAT, HIDDEN)
        self.pool = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, visual_feats: Tensor, visual_pos: Tensor,
                visual_mask: Tensor | None = None, position_ids: Tensor | None = None) -> BackboneOutput:
        text = self.embed(input_ids)
        vision = self.visual(visual_feats) + text.mean(1, keepdim=True)
        pooled = torch.tanh(self.pool(text[:, 0] + vision.mean(1)))
        return BackboneOutput(text, vision, pooled)

    def word_embeddings(self) -> nn.Embedding:
        return self.embed


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_batch(b: int = 4, t: int = 10, real_regions: Sequence[int] | None = None, seed: int = 0) -> Batch:
    """Random content tokens framed by [CLS]/[SEP] with right padding; regions with prefix real masks."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    pos = torch.arange(t)
    ids[:, 0] = CLS
    ids = torch.where(pos == lengths[:, None] - 1, SEP, ids)
    attention = (pos < lengths[:, None]).long()
    ids = torch.where(attention.bool(), ids, PAD)
    real = list(real_regions) if real_regions is not None else [REGIONS - (i % 5) for i in range(b)]
    visual_mask = (torch.arange(REGIONS) < torch.tensor(real)[:, None]).long()
    return {
        "input_ids": ids, "attention_mask": attention, "position_ids": attention.clone(),
        "visual_feats": torch.randn(b, REGIONS, FEAT, generator=g),
        "visual_pos": torch.rand(b, REGIONS, 4, generator=g), "visual_mask": visual_mask,
        "obj_labels": torch.randint(0, INFO.num_objects, (b, REGIONS), generator=g),
        "obj_conf": torch.rand(b, REGIONS, generator=g),
        "attr_labels": torch.randint(0, INFO.num_attributes, (b, REGIONS), generator=g),
        "attr_conf": torch.rand(b, REGIONS, generator=g),
        "img_id": [f"img{i}" for i in range(b)], "text": ["t"] * b,
    }


def clone(batch: Batch) -> Batch:
    return {k: (v.clone() if isinstance(v, Tensor) else list(v)) for k, v in batch.items()}


def random_output(b: int, t: int, seed: int = 1) -> BackboneOutput:
    g = torch.Generator().manual_seed(seed)
    return BackboneOutput(torch.randn(b, t, HIDDEN, generator=g), torch.randn(b, REGIONS, HIDDEN, generator=g),
                          torch.randn(b, HIDDEN, generator=g))


# --- registration -------------------------------------------------------------------------------------------


def test_plugin_registers_all_eight_tasks() -> None:
    registry = Registry()
    plugin.mmcore_register_tasks(registry)
    assert registry.names("task") == sorted(["mlm", "mrfr", "moc", "itm", "itm_hs", "ifrs", "titp", "tits"])
    orders = {e.name: e.factory.order for e in registry.entries("task")}
    assert orders["itm"] == orders["itm_hs"] == 0
    assert orders["titp"] == orders["tits"] == 10
    assert orders["ifrs"] == 20 and orders["mlm"] == orders["mrfr"] == orders["moc"] == 30
    assert registry.get("task", "moc").defaults == {"mask_prob": 0.15, "masked_only": True, "max_predictions": None}
    assert registry.get("task", "itm_hs").defaults == {"replace_prob": 0.5, "top_m": 100, "balance_negatives": False}


def test_tasks_do_not_own_the_backbone_and_a_full_stage_trains() -> None:
    backbone = TinyBackbone()
    tasks = [cls(INFO, backbone) for cls in (MLMTask, MRFRTask, MOCTask, IFRSTask, TITSTask, ITMTask)]
    backbone_params = {id(p) for p in backbone.parameters()}
    for task in tasks:
        assert not backbone_params & {id(p) for p in task.parameters()}, task.name
        assert not any(k.startswith("_backbone") for k in task.state_dict())
    batch = make_batch(b=6)
    batch["itm_label"] = torch.tensor([1, 0, 1, 1, 0, 1])
    g = gen(3)
    for task in sorted(tasks, key=lambda t: t.order):
        task.corrupt(batch, g)
    output = backbone.encode(batch)
    total = sum(task.loss(output, batch) for task in tasks)
    assert torch.isfinite(total)
    total.backward()
    assert backbone.embed.weight.grad is not None and backbone.visual.weight.grad is not None


def test_corruption_is_reproducible_from_the_generator() -> None:
    task_a, task_b = MLMTask(INFO, TinyBackbone()), MRFRTask(INFO, TinyBackbone())
    first, second = make_batch(b=8), make_batch(b=8)
    for batch in (first, second):
        g = gen(11)
        task_a.corrupt(batch, g)
        task_b.corrupt(batch, g)
    for key in ("input_ids", "mlm_labels", "visual_feats", "region_mask"):
        assert torch.equal(first[key], second[key]), key


# --- MLM ----------------------------------------------------------------------------------------------------


def test_mlm_selection_and_80_10_10_split() -> None:
    task = MLMTask(INFO, TinyBackbone())
    batch = make_batch(b=2000, t=24, seed=5)
    original = batch["input_ids"].clone()
    task.corrupt(batch, gen(0))
    labels, ids = batch["mlm_labels"], batch["input_ids"]
    selected = labels != -100
    content = batch["attention_mask"].bool() & (original >= 5)
    assert not (selected & ~content).any(), "special or padding token selected"
    rate = selected.sum().item() / content.sum().item()
    assert abs(rate - 0.15) < 0.01
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(ids[~selected], original[~selected])
    n = selected.sum().item()
    masked = (ids[selected] == MASK).sum().item() / n
    unchanged = (ids[selected] == original[selected]).sum().item() / n
    assert abs(masked - 0.8) < 0.02
    # random draws hit the original id about 1/55 of the time, hence the small slack
    assert abs(unchanged - 0.1) < 0.02
    random_ids = ids[selected & (ids != MASK) & (ids != original)]
    assert abs(random_ids.numel() / n - 0.1) < 0.02
    assert (random_ids >= 5).all(), "random replacement drew a special token"


def test_mlm_loss_equals_hand_cross_entropy_on_selected_positions() -> None:
    backbone = TinyBackbone()
    task = MLMTask(INFO, backbone, mask_prob=0.3)
    batch = make_batch(b=8, seed=2)
    task.corrupt(batch, gen(1))
    output = backbone.encode(batch)
    selected = batch["mlm_labels"] != -100
    assert selected.any()
    logits = task.head(output.text[selected], backbone.embed.weight)
    expected = F.cross_entropy(logits, batch["mlm_labels"][selected])
    assert torch.allclose(task.loss(output, batch), expected)
    task.loss(output, batch).backward()
    assert backbone.embed.weight.grad is not None  # the decoder is tied to the embeddings


def test_mlm_loss_is_zero_when_nothing_is_selected() -> None:
    backbone = TinyBackbone()
    task = MLMTask(INFO, backbone, mask_prob=0.0)
    batch = make_batch(b=4)
    original = batch["input_ids"].clone()
    task.corrupt(batch, gen(0))
    assert torch.equal(batch["input_ids"], original)
    loss = task.loss(backbone.encode(batch), batch)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()


def test_mlm_max_predictions_caps_rows_and_matches_the_exact_loss() -> None:
    backbone = TinyBackbone()
    capped = MLMTask(INFO, backbone, mask_prob=0.5, max_predictions=3)
    batch = make_batch(b=200, t=12, seed=3)
    capped.corrupt(batch, gen(0))
    per_row = (batch["mlm_labels"] != -100).sum(1)
    assert per_row.max().item() == 3 and (per_row < 3).any()
    output = backbone.encode(batch)
    exact = MLMTask(INFO, backbone)
    exact.head.load_state_dict(capped.head.state_dict())
    assert torch.allclose(capped.loss(output, batch), exact.loss(output, batch), atol=1e-6)


def test_corruptions_and_static_losses_have_no_data_dependent_ops() -> None:
    """Fake tensors carry no data: a host sync (.item(), nonzero, boolean indexing) raises under them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    backbone = TinyBackbone()
    tasks = [MLMTask(INFO, backbone, max_predictions=4), MRFRTask(INFO, backbone), MOCTask(INFO, backbone),
             IFRSTask(INFO, backbone), TITSTask(INFO, backbone)]
    batch, output = make_batch(b=6), random_output(6, 10)
    g = gen(0)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {k: (mode.from_tensor(v) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        fake_output = BackboneOutput(*(mode.from_tensor(x) for x in output))
        for task in sorted(tasks, key=lambda t: t.order):
            task.corrupt(fake, g)
        for task in tasks:
            assert task.loss(fake_output, fake).shape == ()


def test_mlm_gathered_logits_loss_equals_the_full_vocabulary_loss() -> None:
    """Decoding only the gathered target positions gives the loss and gradients of decoding every position."""
    backbone = TinyBackbone()
    batch = make_batch(b=3, t=6, seed=8)
    labels = torch.full((3, 6), -100)
    labels[0, 1], labels[0, 4] = 17, 33  # two targets, not adjacent
    labels[2, 1], labels[2, 2], labels[2, 3] = 5, 59, 21  # row 1 has none
    batch["mlm_labels"] = labels
    full_task = MLMTask(INFO, backbone)
    full_task.zero_grad()
    output = backbone.encode(batch)
    # The reference: the decoder on all 18 positions, CE averaged over the 5 labelled ones.
    logits = full_task.head(output.text.flatten(0, 1), backbone.embed.weight)
    expected = F.cross_entropy(logits, labels.flatten(), ignore_index=-100)
    expected.backward()
    expected_grads = [p.grad.clone() for p in (backbone.embed.weight, *full_task.head.parameters())]
    for cap in (None, 3, 6):
        task = MLMTask(INFO, backbone, max_predictions=cap)
        task.head.load_state_dict(full_task.head.state_dict())
        backbone.zero_grad()
        loss = task.loss(backbone.encode(batch), batch)
        assert torch.allclose(loss, expected, atol=1e-6), cap
        loss.backward()
        grads = [p.grad for p in (backbone.embed.weight, *task.head.parameters())]
        # Gradients reach ~30 here; float32 sums in another order differ by up to ~7e-6.
        assert all(torch.allclose(g, e, rtol=1e-5, atol=1e-5) for g, e in zip(grads, expected_grads)), cap


def test_max_predictions_must_be_a_positive_integer() -> None:
    for cls in (MLMTask, MRFRTask, MOCTask):
        for bad in (0, -2, 2.5, "8", True):
            with pytest.raises(MMCoreError, match=f"task {cls.name}: option 'max_predictions'"):
                cls(INFO, TinyBackbone(), max_predictions=bad)


# --- region masking, MRFR, MOC -------------------------------------------------------------------------------


def test_mrfr_and_moc_share_one_region_mask() -> None:
    backbone = TinyBackbone()
    mrfr, moc = MRFRTask(INFO, backbone), MOCTask(INFO, backbone, mask_prob=0.5)
    batch = make_batch(b=16, real_regions=[7] * 16)
    mrfr.corrupt(batch, gen(0))
    mask, feats = batch["region_mask"], batch["visual_feats"]
    moc.corrupt(batch, gen(99))
    assert batch["region_mask"] is mask and batch["visual_feats"] is feats


def test_region_masking_statistics() -> None:
    b = 1000
    batch = make_batch(b=b, seed=4)
    original = batch["visual_feats"].clone()
    mask_regions_once(batch, gen(0), 0.15)
    selected, real = batch["region_mask"], batch["visual_mask"].bool()
    assert not (selected & ~real).any(), "padding region selected"
    assert abs(selected.sum().item() / real.sum().item() - 0.15) < 0.01
    assert torch.equal(batch["visual_feats_orig"], original)
    feats = batch["visual_feats"]
    assert torch.equal(feats[~selected], original[~selected])
    zero = (feats == 0).all(-1) & selected
    kept = (feats == original).all(-1) & selected
    swapped = selected & ~zero & ~kept
    n = selected.sum().item()
    assert abs(zero.sum().item() / n - 0.8) < 0.03
    assert abs(kept.sum().item() / n - 0.1) < 0.03
    assert abs(swapped.sum().item() / n - 0.1) < 0.03
    # a swapped region is a real region of another image of the batch
    for i, o in swapped.nonzero()[:50].tolist():
        hits = ((original == feats[i, o]).all(-1) & real).nonzero().tolist()
        assert hits and all(j != i for j, _ in hits)


def test_mrfr_loss_equals_hand_computation() -> None:
    task = MRFRTask(INFO, TinyBackbone(), mask_prob=0.4)
    batch = make_batch(b=3, real_regions=[12, 9, 5])
    task.corrupt(batch, gen(2))
    output = random_output(3, batch["input_ids"].shape[1])
    pred = task.head(output.vision)
    expected = torch.tensor(0.0)
    for i in range(3):
        for o in range(REGIONS):
            if batch["region_mask"][i, o]:
                expected = expected + F.smooth_l1_loss(pred[i, o], batch["visual_feats_orig"][i, o])
    expected = expected / (12 + 9 + 5) / 0.4
    assert batch["region_mask"].any()
    assert torch.allclose(task.loss(output, batch), expected, atol=1e-6)


@pytest.mark.parametrize("masked_only", [True, False])
def test_moc_confidence_weighted_loss(masked_only: bool) -> None:
    task = MOCTask(INFO, TinyBackbone(), mask_prob=0.3, masked_only=masked_only)
    batch = make_batch(b=3, real_regions=[12, 8, 4])
    batch["obj_labels"][~batch["visual_mask"].bool()] = -1  # padding regions may carry junk labels
    task.corrupt(batch, gen(4))
    output = random_output(3, batch["input_ids"].shape[1])
    obj_logits, attr_logits = task.head(output.vision)
    counted = batch["region_mask"] if masked_only else batch["visual_mask"].bool()
    expected = torch.tensor(0.0)
    for i, o in counted.nonzero().tolist():
        obj = -F.log_softmax(obj_logits[i, o], -1)[batch["obj_labels"][i, o]]
        attr = -F.log_softmax(attr_logits[i, o], -1)[batch["attr_labels"][i, o]]
        expected = expected + batch["obj_conf"][i, o] * obj + batch["attr_conf"][i, o] * attr
    expected = expected / 24 / (0.3 if masked_only else 1.0)
    assert counted.any()
    assert torch.allclose(task.loss(output, batch), expected, atol=1e-6)
    # zero confidence removes a region from the loss
    batch["obj_conf"].zero_()
    batch["attr_conf"].zero_()
    assert task.loss(output, batch).item() == 0.0


def test_capped_region_masking_keeps_every_selection_in_the_index_block() -> None:
    batch = make_batch(b=300, real_regions=[REGIONS - (i % 4) for i in range(300)], seed=6)
    mask_regions_once(batch, gen(0), 0.5, max_per_row=4)
    selected, index = batch["region_mask"], batch["region_index"]
    per_row = selected.sum(1)
    assert index.shape == (300, 4)
    assert per_row.max().item() == 4 and (per_row < 4).any()
    assert not (selected & ~batch["visual_mask"].bool()).any()
    # the first per_row[i] entries of row i are exactly its selected regions, in position order
    for i in range(0, 300, 7):
        n = int(per_row[i])
        assert index[i, :n].tolist() == selected[i].nonzero().flatten().tolist()
    # uncapped: the same draws as before, and the index spans every region
    uncapped, twin = make_batch(b=8, seed=1), make_batch(b=8, seed=1)
    mask_regions_once(uncapped, gen(3), 0.15)
    mask_regions_once(twin, gen(3), 0.15, max_per_row=REGIONS)
    assert uncapped["region_index"].shape == (8, REGIONS)
    assert torch.equal(uncapped["region_mask"], twin["region_mask"])
    assert torch.equal(uncapped["visual_feats"], twin["visual_feats"])


@pytest.mark.parametrize("cls", [MRFRTask, MOCTask])
def test_capped_region_losses_equal_the_all_region_losses(cls: type) -> None:
    """With max_predictions the head runs on a [B,K] block of masked regions; loss and gradients are unchanged."""
    task = cls(INFO, TinyBackbone(), mask_prob=0.4, max_predictions=5)
    batch = make_batch(b=6, real_regions=[12, 9, 5, 12, 3, 7], seed=9)
    task.corrupt(batch, gen(2))
    assert batch["region_index"].shape == (6, 5) and batch["region_mask"].any()
    vision = random_output(6, batch["input_ids"].shape[1]).vision.requires_grad_()
    output = random_output(6, batch["input_ids"].shape[1])._replace(vision=vision)
    gathered = task.loss(output, batch)
    (grad_gathered,) = torch.autograd.grad(gathered, vision)
    everywhere = {k: v for k, v in batch.items() if k != "region_index"}  # no index: heads on all O regions
    full = task.loss(output, everywhere)
    (grad_full,) = torch.autograd.grad(full, vision)
    assert torch.allclose(gathered, full, atol=1e-6)
    assert torch.allclose(grad_gathered, grad_full, rtol=1e-5, atol=1e-5)
    assert (grad_full.abs().sum(-1) > 0).eq(batch["region_mask"]).all()  # only masked regions get gradient


def test_capped_losses_have_no_data_dependent_ops() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    backbone = TinyBackbone()
    tasks = [MLMTask(INFO, backbone, max_predictions=4), MRFRTask(INFO, backbone, max_predictions=3),
             MOCTask(INFO, backbone, max_predictions=3)]
    batch, output = make_batch(b=6), random_output(6, 10)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {k: (mode.from_tensor(v) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        fake_output = BackboneOutput(*(mode.from_tensor(x) for x in output))
        g = gen(0)
        for task in tasks:
            task.corrupt(fake, g)
        assert fake["region_index"].shape == (6, 3)
        for task in tasks:
            assert task.loss(fake_output, fake).shape == ()


# --- IFRS ---------------------------------------------------------------------------------------------------


def test_ifrs_shuffles_only_whole_real_triplets() -> None:
    task = IFRSTask(INFO, TinyBackbone(), shuffle_prob=1.0)
    batch = make_batch(b=4, real_regions=[7, 12, 3, 2])
    before = clone(batch)
    task.corrupt(batch, gen(0))
    moved = batch["ifrs_mask"]
    expected_moved = torch.zeros(4, REGIONS, dtype=torch.bool)
    expected_moved[0, :6] = True  # triplet 6-8 is only partly real
    expected_moved[1, :] = True
    expected_moved[2, :3] = True
    assert torch.equal(moved, expected_moved)
    feats, orig = batch["visual_feats"], before["visual_feats"]
    assert torch.equal(batch["ifrs_target"], orig)
    assert torch.equal(batch["visual_pos"], before["visual_pos"])  # boxes stay
    assert torch.equal(batch["input_ids"], before["input_ids"])  # text order stays
    assert torch.equal(feats[~moved], orig[~moved])
    for i, o in moved.nonzero().tolist():
        base = o - o % 3
        assert not torch.equal(feats[i, o], orig[i, o])  # a cyclic shift moves every region
        src = [s for s in range(base, base + 3) if torch.equal(feats[i, o], orig[i, s])]
        assert len(src) == 1
        assert batch["obj_labels"][i, o] == before["obj_labels"][i, src[0]]  # labels travel with features


def test_ifrs_rate_and_both_cycles() -> None:
    task = IFRSTask(INFO, TinyBackbone(), shuffle_prob=0.05)
    batch = make_batch(b=4000, real_regions=[12] * 4000)
    orig = batch["visual_feats"].clone()
    task.corrupt(batch, gen(1))
    triplets = batch["ifrs_mask"][:, ::3]
    assert abs(triplets.float().mean().item() - 0.05) < 0.005
    shuffled = triplets.nonzero().tolist()
    first_source = {
        next(s for s in range(3) if torch.equal(batch["visual_feats"][i, 3 * t], orig[i, 3 * t + s]))
        for i, t in shuffled[:200]
    }
    assert first_source == {1, 2}


def test_ifrs_loss_is_eq1_and_ignores_unshuffled_regions() -> None:
    task = IFRSTask(INFO, TinyBackbone(), shuffle_prob=0.5)
    batch = make_batch(b=5, real_regions=[12] * 5, seed=7)
    task.corrupt(batch, gen(5))
    moved = batch["ifrs_mask"]
    assert moved.any() and (~moved).any()
    output = random_output(5, batch["input_ids"].shape[1])
    pred = task.head(output.vision)
    expected = sum(((pred[i, o] - batch["ifrs_target"][i, o]) ** 2).sum() for i, o in moved.nonzero().tolist()) / 5
    loss = task.loss(output, batch)
    assert torch.allclose(loss, expected, atol=1e-5)
    vision = output.vision.clone()
    vision[~moved] = float("nan")  # not even NaN predictions on unshuffled regions may leak in
    assert torch.allclose(task.loss(output._replace(vision=vision), batch), loss)
    empty = make_batch(b=2)
    IFRSTask(INFO, TinyBackbone(), shuffle_prob=0.0).corrupt(empty, gen(0))
    assert task.loss(random_output(2, empty["input_ids"].shape[1]), empty).item() == 0.0


def test_ifrs_then_masking_targets() -> None:
    """IFRS targets are the pre-shuffle features; MRFR's are the shuffled ones before masking."""
    ifrs, mrfr = IFRSTask(INFO, TinyBackbone(), shuffle_prob=1.0), MRFRTask(INFO, TinyBackbone())
    batch = make_batch(b=4, real_regions=[12] * 4)
    orig = batch["visual_feats"].clone()
    g = gen(0)
    for task in sorted([mrfr, ifrs], key=lambda t: t.order):
        task.corrupt(batch, g)
    assert torch.equal(batch["ifrs_target"], orig)
    assert not torch.equal(batch["visual_feats_orig"], orig)
    assert torch.equal(batch["visual_feats_orig"].sort(1).values, orig.sort(1).values)


# --- TITP / TITS ----------------------------------------------------------------------------------------------


def test_topic_labels_are_w_cap_l_before_mlm_masking() -> None:
    backbone = TinyBackbone()
    batch = make_batch(b=2, t=9, real_regions=[3, 1])
    # text 0: 12 13 20 10 14 15, then padding whose ids (16) must not count
    batch["input_ids"] = torch.tensor([[CLS, 12, 13, 20, 10, 14, 15, SEP, 16],
                                       [CLS, 12, SEP, PAD, PAD, PAD, PAD, PAD, PAD]])
    batch["attention_mask"] = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0]])
    labels = torch.full((2, REGIONS), 3)  # object 3 (token 14) only on padding regions
    labels[0, :3] = torch.tensor([2, 0, 5])  # (12, 13), (10,), (16,)
    labels[1, 0] = 2
    batch["obj_labels"] = labels
    titp, mlm = TITPTask(INFO, backbone), MLMTask(INFO, backbone, mask_prob=1.0)
    g = gen(0)
    for task in sorted([mlm, titp], key=lambda t: t.order):
        task.corrupt(batch, g)
    assert (batch["mlm_labels"][0, 1:7] != -100).all()  # MLM ran after and masked everything
    expected = torch.zeros(2, VOCAB)
    expected[0, [10, 12, 13]] = 1
    expected[1, 12] = 1  # W ∩ L is over WordPieces: 13 is a piece of the label, not of the text
    assert torch.equal(batch["topic_labels"], expected)
    output = backbone.encode(batch)
    loss = titp.loss(output, batch)
    logits = titp.head(output.pooled)
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, expected))
    assert TITSTask.name == "tits" and isinstance(TITSTask(INFO, backbone), TITPTask)


# --- ITM / ITM_HS -------------------------------------------------------------------------------------------


class FakeSource:
    """An ExampleSource over ``n`` images with one text each and a hard-negative table."""

    def __init__(self, n: int, hard: dict[str, list[str]]) -> None:
        self.ids = [f"img{i}" for i in range(n)]
        self.hard = hard
        self.excluded: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Example:
        return {"text": f"text of {self.ids[index]}", **self.image(self.ids[index])}

    def image(self, img_id: str) -> Example:
        k = self.ids.index(img_id)
        return {"img_id": img_id, "visual_feats": np.full((REGIONS, FEAT), k, np.float32),
                "visual_pos": np.zeros((REGIONS, 4), np.float32), "visual_mask": np.ones(REGIONS, np.int64),
                "obj_labels": np.full(REGIONS, k % 6, np.int64)}

    def image_ids(self) -> Sequence[str]:
        return self.ids

    def random_text(self, rng: random.Random, exclude_img_id: str) -> str:
        self.excluded.append(exclude_img_id)
        return "a random other text"

    def hard_negatives(self, img_id: str) -> Sequence[str]:
        return self.hard.get(img_id, [])


def test_itm_hs_draws_from_top_m_hard_negatives() -> None:
    source = FakeSource(20, {"img0": [f"img{i}" for i in range(1, 11)]})
    task = ITMHardSampleTask(INFO, TinyBackbone(), top_m=3)
    rng = random.Random(0)
    drawn: list[str] = []
    for _ in range(2000):
        example = source[0]
        out = task.prepare(example, source, rng)
        assert example["img_id"] == "img0"  # the source's example is not mutated
        assert out["text"] == "text of img0"  # the text stays
        if out["itm_label"] == 0:
            drawn.append(out["img_id"])
            k = int(out["img_id"][3:])
            assert (out["visual_feats"] == k).all() and (out["obj_labels"] == k % 6).all()
        else:
            assert out["img_id"] == "img0"
    assert abs(len(drawn) / 2000 - 0.5) < 0.04
    assert set(drawn) == {"img1", "img2", "img3"}


@pytest.mark.parametrize("balance", [False, True])
def test_itm_hs_balance_negatives_draws_hubs_less(balance: bool) -> None:
    # img3 is in three of the four lists, img1 in one: balanced, img0's negative is img1 with weight 1 and img3
    # with weight 1/3 (3/4 and 1/4 of the draws); uniform, half each.
    hard = {"img0": ["img1", "img3"], "img1": ["img3"], "img2": ["img3"], "img3": ["img0"]}
    source = FakeSource(4, hard)
    task = ITMHardSampleTask(INFO, TinyBackbone(), balance_negatives=balance)
    rng = random.Random(3)
    drawn = [out["img_id"] for out in (task.prepare(source[0], source, rng) for _ in range(6000))
             if out["itm_label"] == 0]
    share = drawn.count("img1") / len(drawn)
    assert set(drawn) == {"img1", "img3"}
    assert abs(share - (0.75 if balance else 0.5)) < 0.03


def test_itm_hs_falls_back_to_a_random_other_image() -> None:
    source = FakeSource(5, {})
    task = ITMHardSampleTask(INFO, TinyBackbone())
    rng = random.Random(1)
    drawn = [out["img_id"] for out in (task.prepare(source[2], source, rng) for _ in range(500))
             if out["itm_label"] == 0]
    assert set(drawn) == {"img0", "img1", "img3", "img4"}


def test_itm_replaces_text_not_image() -> None:
    source = FakeSource(4, {})
    task = ITMTask(INFO, TinyBackbone())
    rng = random.Random(2)
    outs = [task.prepare(source[1], source, rng) for _ in range(1000)]
    mismatched = [o for o in outs if o["itm_label"] == 0]
    assert abs(len(mismatched) / 1000 - 0.5) < 0.05
    assert all(o["text"] == "a random other text" for o in mismatched)
    assert all(o["text"] == "text of img1" for o in outs if o["itm_label"] == 1)
    assert all(o["img_id"] == "img1" and (o["visual_feats"] == 1).all() for o in outs)
    assert set(source.excluded) == {"img1"}


def test_itm_loss_and_classifier() -> None:
    for cls in (ITMTask, ITMHardSampleTask):
        task = cls(INFO, TinyBackbone())
        assert isinstance(task.classifier, nn.Linear) and task.classifier.out_features == 2
        output = random_output(4, 5)
        batch: dict[str, Any] = {"itm_label": torch.tensor([1, 0, 0, 1])}
        expected = F.cross_entropy(task.classifier(output.pooled), batch["itm_label"])
        assert torch.allclose(task.loss(output, batch), expected)
