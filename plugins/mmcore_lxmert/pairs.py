"""Scoring many (text, image) pairs with LXMERT: each text's and each image's own work done once, not per pair.

What depends on one modality alone is computed once per text and once per image: the text embeddings and the
language layers, the visual feature encoder (with the visual [CLS] region) and the relationship layers, and the
first cross-modality layer's query/key/value projections of both streams. A batch of pairs gathers those rows
and runs only the cross-modality layers; the last one computes position 0 of each stream only, which is all the
poolers read. The pooled output equals :meth:`Lxmert.forward`'s up to floating-point rounding (the same
operations, grouped differently), in evaluation mode (dropout off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mmcore.api import Batch, MMCoreError
from mmcore_lxmert.layers import attention_bias

if TYPE_CHECKING:
    from mmcore_lxmert.model import Lxmert

# Keys of the encoded texts / images (distinct, as a batch of pairs holds both).
_LANG, _LANG_MASK, _LANG_QKV = "lxmert_lang", "lxmert_lang_mask", ("lxmert_lang_q", "lxmert_lang_k", "lxmert_lang_v")
_VISN, _VISN_MASK, _VISN_QKV = "lxmert_visn", "lxmert_visn_mask", ("lxmert_visn_q", "lxmert_visn_k", "lxmert_visn_v")


class LxmertPairEncoder:
    """:class:`mmcore.api.PairEncoder` of an :class:`Lxmert` (use under ``torch.inference_mode`` / ``no_grad``)."""

    def __init__(self, model: Lxmert) -> None:
        self.model = model

    def texts(self, fields: Batch) -> Batch:
        """Per text [C,T,...]: the language stream after the language layers, its mask, its first-layer projections."""
        model = self.model
        positions = fields.get("position_ids") if model.config.whole_word_positions else None
        if model.config.whole_word_positions and positions is None:
            raise MMCoreError("backbone option 'whole_word_positions' is on but the texts have no 'position_ids'")
        lang = model.embeddings(fields["input_ids"], positions)
        mask = fields["attention_mask"]
        bias = attention_bias(mask, model._compute_dtype(lang.device))
        for layer in model.encoder.layer:
            lang = layer(lang, bias)
        projections = model.encoder.x_layers[0].cross_projections(lang)
        return {_LANG: lang, _LANG_MASK: mask, **dict(zip(_LANG_QKV, projections))}

    def images(self, fields: Batch) -> Batch:
        """Per image [I,O(+1),...]: the visual stream after the relationship layers (with the visual [CLS] region),
        its mask, its first-layer projections."""
        model = self.model
        feats = fields["visual_feats"].to(model.encoder.visn_fc.visn_fc.weight.dtype)
        boxes = fields["visual_pos"].to(feats.dtype)
        mask = fields.get("visual_mask")
        if model.visual_cls_embedding is not None:
            count = feats.shape[0]
            feats = torch.cat([model.visual_cls_embedding.expand(count, 1, -1), feats], dim=1)
            boxes = torch.cat([model.visual_cls_box.to(boxes.dtype).expand(count, 1, -1), boxes], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(count, 1), mask], dim=1)
        visn = model.encoder.visn_fc(feats, boxes)
        bias = None if mask is None else attention_bias(mask, model._compute_dtype(visn.device))
        for layer in model.encoder.r_layers:
            visn = layer(visn, bias)
        out = {_VISN: visn, **dict(zip(_VISN_QKV, model.encoder.x_layers[0].cross_projections(visn)))}
        if mask is not None:
            out[_VISN_MASK] = mask
        return out

    def pooled(self, pairs: Batch) -> Tensor:
        """The pooled output [B,H] of a batch of pairs: rows of :meth:`texts` and :meth:`images` gathered per pair."""
        model = self.model
        lang, visn = pairs[_LANG], pairs[_VISN]
        dtype = model._compute_dtype(lang.device)
        lang_bias = attention_bias(pairs[_LANG_MASK], dtype)
        visn_bias = attention_bias(pairs[_VISN_MASK], dtype) if _VISN_MASK in pairs else None
        lang_qkv: tuple[Tensor, Tensor, Tensor] = (pairs[_LANG_QKV[0]], pairs[_LANG_QKV[1]], pairs[_LANG_QKV[2]])
        visn_qkv: tuple[Tensor, Tensor, Tensor] = (pairs[_VISN_QKV[0]], pairs[_VISN_QKV[1]], pairs[_VISN_QKV[2]])
        layers = model.encoder.x_layers
        for index, layer in enumerate(layers):
            if index:
                lang_qkv, visn_qkv = layer.cross_projections(lang), layer.cross_projections(visn)
            lang, visn = layer.forward_projected(lang, lang_qkv, lang_bias, visn, visn_qkv, visn_bias,
                                                 first_only=index == len(layers) - 1)
        pooled = model.pooler(lang)
        if model.visn_pooler is not None:
            pooled = pooled * model.visn_pooler(visn)
        return pooled
