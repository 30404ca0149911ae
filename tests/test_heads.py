"""The ``vqa`` and ``retrieval`` heads against a tiny fake backbone, fake views and the real collator."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import pytest
import torch
from mmcore_heads import plugin
from mmcore_heads.metrics import vqa_accuracy
from mmcore_heads.retrieval import RetrievalHead
from mmcore_heads.vqa import VQAHead
from torch import Tensor, nn
from torch.nn import functional as F

from mmcore.api import Backbone, BackboneOutput, Batch, DataInfo, Example
from mmcore.data.collate import Collator
from mmcore.errors import MMCoreError
from mmcore.registry import Registry

NUM_IMAGES, REGIONS, HIDDEN = 4, 3, 8
FEAT = HIDDEN
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"img{k}" for k in range(NUM_IMAGES)] + [f"cap{j}" for j in range(5)] + ["a", "very", "red", "what", "is"]
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}


def make_info(answers: dict[str, tuple[str, ...]] | None = None) -> DataInfo:
    return DataInfo(
        vocab_size=len(VOCAB), feature_dim=FEAT, max_regions=REGIONS, num_objects=3, num_attributes=2,
        pad_token_id=0, cls_token_id=2, sep_token_id=3, mask_token_id=4, unk_token_id=1,
        special_token_ids=(0, 1, 2, 3, 4), object_token_ids=((5,), (6,), (7,)),
        answers=answers if answers is not None else {"vqa": ("yes", "no", "two", "red", "cat")},
    )


@pytest.fixture(scope="module")
def collator() -> Collator:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    return Collator(fast)


class FakeBackbone(Backbone):
    """pooled = (masked mean of word embeddings) ⊙ (masked mean of projected region features)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.hidden_size = HIDDEN
        self.embed = nn.Embedding(len(VOCAB), HIDDEN)
        self.proj = nn.Linear(FEAT, HIDDEN)

    def forward(  # type: ignore[override]
        self, input_ids: Tensor, attention_mask: Tensor, visual_feats: Tensor, visual_pos: Tensor,
        visual_mask: Tensor | None = None, position_ids: Tensor | None = None,
    ) -> BackboneOutput:
        text = self.embed(input_ids)
        tm = attention_mask.unsqueeze(-1).float()
        vision = self.proj(visual_feats)
        vm = (visual_mask if visual_mask is not None else torch.ones(vision.shape[:2])).unsqueeze(-1).float()
        pooled = (text * tm).sum(1) / tm.sum(1) * (vision * vm).sum(1) / vm.sum(1)
        return BackboneOutput(text, vision, pooled)


def oracle_backbone() -> FakeBackbone:
    """Word ``imgK`` and image K's regions both map to unit vector e_K, so pooled is nonzero only when matched."""
    bb = FakeBackbone()
    with torch.no_grad():
        bb.embed.weight.zero_()
        for k in range(NUM_IMAGES):
            bb.embed.weight[VOCAB[f"img{k}"], k] = 1.0
        bb.proj.weight.copy_(torch.eye(HIDDEN))
        bb.proj.bias.zero_()
    return bb


class FakeCtx:
    """EvalContext on the CPU that records its progress bars."""

    def __init__(self, collator: Collator, batch_size: int = 4) -> None:
        self.device = torch.device("cpu")
        self.batch_size = batch_size
        self._collator = collator
        self.bars: list[list[int]] = []  # [total, advanced]

    def collate(self, examples: list[Example]) -> Batch:
        return self._collator(examples)

    def progress(self, total: int, description: str) -> Callable[[int], None]:
        bar = [total, 0]
        self.bars.append(bar)

        def advance(n: int) -> None:
            bar[1] += n

        return advance

    def batches(self, examples: Sequence[Example], description: str) -> Iterator[Batch]:
        for start in range(0, len(examples), self.batch_size):
            yield self.collate([examples[i] for i in range(start, min(start + self.batch_size, len(examples)))])


def image_fields(k: int, rng: np.random.Generator | None = None) -> Example:
    """Image k: one-hot e_k regions (or random ones), the last region masked out for odd k."""
    feats = np.zeros((REGIONS, FEAT), np.float32)
    feats[:, k] = 1.0
    if rng is not None:
        feats = rng.normal(size=(REGIONS, FEAT)).astype(np.float32)
    mask = np.ones(REGIONS, np.int64)
    mask[-1] = 0 if k % 2 else 1
    pos = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (REGIONS, 1))
    return {"visual_feats": feats, "visual_pos": pos, "visual_mask": mask, "img_id": f"im{k}"}


class FakeRetrievalView:
    """NUM_IMAGES images × 5 captions of varied length; image k's captions all contain the word ``imgK``."""

    def __init__(self, hard: dict[str, list[str]] | None = None, random_features: bool = False) -> None:
        rng = np.random.default_rng(0) if random_features else None
        self.images = [f"im{k}" for k in range(NUM_IMAGES)]
        self._images = {f"im{k}": image_fields(k, rng) for k in range(NUM_IMAGES)}
        self.captions = [f"img{k} cap{j}" + " very" * (j % 3) for k in range(NUM_IMAGES) for j in range(5)]
        self.caption_image = [k for k in range(NUM_IMAGES) for _ in range(5)]
        self._hard = hard or {}

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> Example:
        k = self.caption_image[index]
        return {"text": self.captions[index], **self._images[self.images[k]], "caption_index": index, "image_index": k}

    def image(self, img_id: str) -> Example:
        return dict(self._images[img_id])

    def image_ids(self) -> Sequence[str]:
        return self.images

    def captions_of(self, img_id: str) -> list[str]:
        k = self.images.index(img_id)
        return [c for c, owner in zip(self.captions, self.caption_image) if owner == k]

    def hard_negatives(self, img_id: str) -> Sequence[str]:
        return self._hard.get(img_id, [])

    def random_text(self, rng: random.Random, exclude_img_id: str) -> str:
        choices = [c for c, k in zip(self.captions, self.caption_image) if self.images[k] != exclude_img_id]
        return rng.choice(choices)


class FakeITM(nn.Module):
    """Stands in for a pre-trained ITM task: only its ``classifier`` matters to the head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.classifier = nn.Linear(HIDDEN, 2)


# ---- registration ---------------------------------------------------------------------------------------------


def test_plugin_registers_both_heads() -> None:
    registry = Registry()
    plugin.mmcore_register_heads(registry)
    assert registry.names("head") == ["gqa", "nlvr2", "retrieval", "vqa"]
    assert "vqa_target" in registry.get("head", "vqa").requires
    assert registry.get("head", "retrieval").defaults["init_from"] == ["itm_hs", "itm"]
    assert any(ep.value == "mmcore_heads.plugin" for ep in entry_points(group="mmcore"))


# ---- vqa --------------------------------------------------------------------------------------------------------


def vqa_examples(n: int, num_answers: int) -> list[Example]:
    rng = np.random.default_rng(1)
    out = []
    for q in range(n):
        target = np.zeros(num_answers, np.float32)
        target[rng.integers(num_answers, size=2)] = rng.choice([0.3, 0.6, 0.9, 1.0], size=2)
        out.append({"text": "what is " + "red " * (q % 3), **image_fields(q % NUM_IMAGES, rng), "vqa_target": target,
                    "question_id": q})
    return out


def test_vqa_head_shape_and_flags() -> None:
    head = VQAHead(make_info(), HIDDEN, {})
    layers = list(head.logit_fc)
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.LayerNorm, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[3].out_features) == (HIDDEN, 2 * HIDDEN, 5)
    assert head.zero_shot_ready is False and head.primary_metric() == "accuracy"
    assert "vqa_target" in VQAHead.requires


def test_vqa_missing_answer_table_is_a_clear_error() -> None:
    with pytest.raises(MMCoreError, match="answer table 'vqa'"):
        VQAHead(make_info(answers={"gqa": ("a",)}), HIDDEN, {})


def test_vqa_loss_is_num_answers_times_mean_bce(collator: Collator) -> None:
    head = VQAHead(make_info(), HIDDEN, {})
    backbone = FakeBackbone()
    batch = collator(vqa_examples(6, head.num_answers))
    loss = head.loss(backbone, batch)
    logits, target = head.logits(backbone, batch), batch["vqa_target"]
    # Element-wise BCE summed over answers, averaged over questions == A × (mean over B×A).
    p = torch.sigmoid(logits)
    by_hand = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum() / logits.shape[0]
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.item() == pytest.approx(head.num_answers * F.binary_cross_entropy_with_logits(logits, target).item())
    loss.backward()
    assert head.logit_fc[0].weight.grad is not None


def test_vqa_evaluate_matches_accuracy_over_all_batches(collator: Collator) -> None:
    head = VQAHead(make_info(), HIDDEN, {}).eval()
    backbone = FakeBackbone().eval()
    examples = vqa_examples(10, head.num_answers)  # 10 with batch 4: the last batch is short
    with torch.no_grad():
        metrics = head.evaluate(backbone, examples, FakeCtx(collator, batch_size=4))  # type: ignore[arg-type]
        whole = collator(examples)
        expected = vqa_accuracy(head.logits(backbone, whole), whole["vqa_target"])
    assert metrics.keys() == {"accuracy"}
    assert metrics["accuracy"] == pytest.approx(expected)
    assert 0.0 <= metrics["accuracy"] <= 1.0


# ---- retrieval: construction and zero-shot init ---------------------------------------------------------------


def test_retrieval_without_pretraining_is_not_zero_shot_ready() -> None:
    head = RetrievalHead(make_info(), HIDDEN, {})
    assert head.zero_shot_ready is False and head.initialized_from is None
    assert head.primary_metric() == "ir_r1"


def test_zero_shot_init_copies_the_itm_classifier_exactly(collator: Collator) -> None:
    itm_hs, itm = FakeITM(1), FakeITM(2)
    pretrained: dict[str, Any] = {"itm": itm, "itm_hs": itm_hs, "mlm": nn.Module()}
    head = RetrievalHead(make_info(), HIDDEN, pretrained)
    assert head.zero_shot_ready is True and head.initialized_from == "itm_hs"  # first of init_from wins
    assert torch.equal(head.match.weight, itm_hs.classifier.weight)
    assert torch.equal(head.match.bias, itm_hs.classifier.bias)
    assert head.match.weight.data_ptr() != itm_hs.classifier.weight.data_ptr()  # a copy, not shared
    backbone = FakeBackbone()
    batch = collator([FakeRetrievalView()[i] for i in range(6)])
    with torch.no_grad():
        logits = itm_hs.classifier(backbone.encode(batch).pooled)
        scores = head.scores(backbone, batch)
    assert torch.allclose(scores, logits[:, 1] - logits[:, 0])
    # sigmoid(score) is the ITM head's softmax probability of "matched".
    assert torch.allclose(torch.sigmoid(scores), logits.softmax(-1)[:, 1], atol=1e-6)

    only_itm = RetrievalHead(make_info(), HIDDEN, {"itm": itm})  # type: ignore[dict-item]
    assert only_itm.initialized_from == "itm" and torch.equal(only_itm.match.weight, itm.classifier.weight)


def test_retrieval_scores_stay_fp32_under_bf16_autocast() -> None:
    # bf16 logits carry 8 bits of mantissa: ranking hundreds of images by them would tie many. The score's last
    # linear layer runs in fp32 on the (bf16) pooled output, so it equals the fp32 computation on those inputs.
    head = RetrievalHead(make_info(), HIDDEN, {})
    pooled = torch.randn(300, HIDDEN).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = head.pooled_scores(pooled)
    with torch.no_grad():
        logits = head.match(pooled.float())
    assert scores.dtype == torch.float32 and torch.equal(scores, logits[:, 1] - logits[:, 0])
    assert scores.unique().numel() == 300


def test_zero_shot_init_rejects_a_wrong_classifier() -> None:
    bad = nn.Module()
    bad.classifier = nn.Linear(HIDDEN, 3)
    with pytest.raises(MMCoreError, match="Linear"):
        RetrievalHead(make_info(), HIDDEN, {"itm": bad})  # type: ignore[dict-item]


def test_unknown_negative_kind_is_an_error() -> None:
    with pytest.raises(MMCoreError, match="unknown negatives"):
        RetrievalHead(make_info(), HIDDEN, {}, negatives=["random_image", "nearest_text"])


# ---- retrieval: training pairs ----------------------------------------------------------------------------------


def test_prepare_yields_positive_and_three_negatives(collator: Collator) -> None:
    view = FakeRetrievalView(hard={"im0": ["im2", "im3"]})
    head = RetrievalHead(make_info(), HIDDEN, {})
    example = view[1]  # caption "img0 cap1 very" of image im0
    for seed in range(20):
        pos, rand_image, hard_caption, rand_caption = head.prepare(example, view, random.Random(seed))
        assert [e["match_label"] for e in (pos, rand_image, hard_caption, rand_caption)] == [1.0, 0.0, 0.0, 0.0]
        assert pos["text"] == example["text"] and pos["img_id"] == "im0"
        # A random other image with the same caption.
        assert rand_image["text"] == example["text"] and rand_image["img_id"] != "im0"
        assert np.array_equal(rand_image["visual_feats"], view.image(rand_image["img_id"])["visual_feats"])
        # The same image with a caption of one of its hard negatives.
        assert hard_caption["img_id"] == "im0" and np.array_equal(hard_caption["visual_feats"], example["visual_feats"])
        assert hard_caption["text"] in view.captions_of("im2") + view.captions_of("im3")
        # The same image with a random caption of another image.
        assert rand_caption["img_id"] == "im0"
        assert rand_caption["text"] not in view.captions_of("im0")
    # Every prepared example has the same fields, so they collate into one batch.
    batch = collator(head.prepare(example, view, random.Random(0)))
    assert batch["match_label"].tolist() == [1.0, 0.0, 0.0, 0.0] and batch["visual_feats"].shape[0] == 4


def test_hard_pool_limits_the_hard_images() -> None:
    view = FakeRetrievalView(hard={"im0": ["im3", "im2", "im1"]})
    head = RetrievalHead(make_info(), HIDDEN, {}, hard_pool=1)
    texts = {head.prepare(view[0], view, random.Random(s))[2]["text"] for s in range(30)}
    assert texts <= set(view.captions_of("im3")) and len(texts) > 1


def test_hard_caption_falls_back_to_a_random_other_caption() -> None:
    view = FakeRetrievalView(hard={})
    head = RetrievalHead(make_info(), HIDDEN, {}, negatives=["hard_caption"])
    for seed in range(10):
        out = head.prepare(view[7], view, random.Random(seed))  # image im1
        assert len(out) == 2 and out[1]["text"] not in view.captions_of("im1")


def test_negatives_never_repeat_the_positive_text() -> None:
    # Synthetic scenes can share a caption; a "negative" identical to the positive would be a mislabelled pair.
    view = FakeRetrievalView(hard={"im0": ["im2"]})
    view.captions[10] = view.captions[1]  # im2's first caption now equals im0's "img0 cap1 very"
    head = RetrievalHead(make_info(), HIDDEN, {})
    for seed in range(30):
        _, rand_image, hard_caption, _ = head.prepare(view[1], view, random.Random(seed))
        assert hard_caption["text"] != view.captions[1]
        assert rand_image["img_id"] != "im2"  # im2 also has this caption, so it is no negative for it


def test_retrieval_loss_is_bce_on_the_score(collator: Collator) -> None:
    view = FakeRetrievalView(hard={"im0": ["im1"]})
    head = RetrievalHead(make_info(), HIDDEN, {})
    backbone = FakeBackbone()
    batch = collator([ex for i in (0, 6, 12) for ex in head.prepare(view[i], view, random.Random(i))])
    loss = head.loss(backbone, batch)
    expected = F.binary_cross_entropy_with_logits(head.scores(backbone, batch), batch["match_label"])
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert head.match.weight.grad is not None and backbone.embed.weight.grad is not None


# ---- retrieval: evaluation ---------------------------------------------------------------------------------------


def test_evaluate_with_an_oracle_backbone_is_perfect(collator: Collator) -> None:
    head = RetrievalHead(make_info(), HIDDEN, {}, eval_batch_pairs=7).eval()
    with torch.no_grad():
        head.match.weight.copy_(torch.stack([torch.zeros(HIDDEN), torch.ones(HIDDEN)]))
        head.match.bias.zero_()
        ctx = FakeCtx(collator)
        metrics = head.evaluate(oracle_backbone().eval(), FakeRetrievalView(), ctx)  # type: ignore[arg-type]
    expected_keys = {f"{m}_r{k}" for m in ("ir", "tr", "tr_first_caption") for k in (1, 5, 10)} | {"ir_mean", "tr_mean"}
    assert metrics.keys() == expected_keys
    assert metrics["ir_r1"] == metrics["tr_r1"] == metrics["tr_first_caption_r1"] == 1.0
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert ctx.bars == [[20 * NUM_IMAGES, 20 * NUM_IMAGES]]  # the bar counts caption × image pairs


@pytest.mark.parametrize("pairs", [1, 7, 20, 45, 10_000])
def test_full_matrix_equals_per_pair_scores(collator: Collator, pairs: int) -> None:
    view = FakeRetrievalView(random_features=True)
    pretrained: dict[str, Any] = {"itm": FakeITM(3)}
    head = RetrievalHead(make_info(), HIDDEN, pretrained, eval_batch_pairs=pairs).eval()
    backbone = FakeBackbone(seed=5).eval()
    ctx = FakeCtx(collator)
    with torch.no_grad():
        matrix = head.score_matrix(backbone, view, ctx)  # type: ignore[arg-type]
        per_pair = torch.empty_like(matrix)
        for c, caption in enumerate(view.captions):
            for i, img_id in enumerate(view.images):
                per_pair[c, i] = head.scores(backbone, collator([{"text": caption, **view.image(img_id)}]))[0]
    assert matrix.shape == (5 * NUM_IMAGES, NUM_IMAGES)
    assert torch.allclose(matrix, per_pair, atol=1e-6)
    assert ctx.bars[-1] == [matrix.numel(), matrix.numel()]


def test_evaluate_rejects_a_view_without_captions(collator: Collator) -> None:
    head = RetrievalHead(make_info(), HIDDEN, {})
    with pytest.raises(MMCoreError, match="retrieval view"):
        head.evaluate(FakeBackbone(), [], FakeCtx(collator))  # type: ignore[arg-type]
