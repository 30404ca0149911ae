"""LXMERT's pair encoder (texts and images encoded once, pairs only through the cross-modality layers) gives the
pooled output of encoding every pair whole, for every architecture option; other backbones have none."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mmcore_heads.scoring import PairInputs
from test_lxmert import OFF, batch, tiny

from mmcore.api import Backbone

VARIANTS = {
    "lxmert_s": {},
    "lxmert (language and relationship layers)": {"l_layers": 2, "r_layers": 1},
    "one cross layer": {"x_layers": 1},
    "no visual cls, plain pooler, plain positions": OFF,
}


@pytest.mark.parametrize("options", list(VARIANTS.values()), ids=list(VARIANTS))
def test_pairs_through_the_pair_encoder_equal_whole_pairs(options: dict[str, Any]) -> None:
    model = tiny(**options)
    data = batch(b=3, t=7, o=5)  # texts and images with padding, of different lengths
    text = {k: data[k] for k in ("input_ids", "attention_mask", "position_ids")}
    image = {k: data[k] for k in ("visual_feats", "visual_pos", "visual_mask")}
    inputs = PairInputs(text, image, data["attention_mask"].sum(1).numpy())
    captions = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    images = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    with torch.inference_mode():
        whole = model(**inputs.batch(captions, images, 7)).pooled
        encoder = model.pair_encoder()
        pooled = encoder.pooled(inputs.encoded(encoder).batch(captions, images, 7))
        # A batch cut to its longest text (6 tokens: captions 0 and 1) gives the same pooled rows.
        cut = encoder.pooled(inputs.encoded(encoder).batch(captions[:6], images[:6], 6))
    assert pooled.shape == whole.shape == (9, 32)
    torch.testing.assert_close(pooled, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(cut, whole[:6], rtol=0, atol=1e-5)


def test_a_backbone_without_a_pair_encoder_is_scored_whole() -> None:
    class Plain(Backbone):
        hidden_size = 4

    assert Plain().pair_encoder() is None
