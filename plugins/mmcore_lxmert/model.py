"""LXMERT and LXMERT-S, one implementation: ``l_layers`` language layers and ``r_layers`` object-relationship
layers (both 0 in LXMERT-S), then ``x_layers`` cross-modality layers; optionally LXMERT-S's visual [CLS] region,
product pooler and whole-word positions.

Parameter names follow transformers' ``LxmertModel`` without the ``lxmert.`` prefix (``encoder.layer.N`` language,
``encoder.r_layers.N`` relationship, ``encoder.x_layers.N`` cross-modality), so its weights and the original
``bert.``-prefixed LXMERT checkpoints load by identical keys (see ``weights.py``). LXMERT-S extras live under their
own names: ``visual_cls_embedding`` and ``visn_pooler.dense``.

Parameter counts (``Lxmert.parameter_counts``): the paper's Table 1 counts "the Transformer part" only, which is
the encoder, i.e. the visual feature encoder (``encoder.visn_fc``) plus every layer; word/position/token-type
embeddings with their LayerNorm, the pooler(s), the visual [CLS] vector and task heads are not in it. At 768/12/3072
with 2048-d features that gives 84,278,784 for LXMERT-S (paper: 84.3M) and 183,508,992 for LXMERT (paper: 183.5M).
transformers' own "excluding embeddings" count adds the pooler and the embedding LayerNorm (84.9M / 184.1M).

Deliberate differences from transformers/LXMERT: no ``padding_idx`` on the embedding tables (padded tokens are
masked out of attention, so their rows never reach real tokens; every row trains), and the visual [CLS] feature
is one learned vector rather than a vocabulary-sized table indexed by the [CLS] id (only that row is ever used).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmcore.api import Backbone, BackboneOutput, MMCoreError
from mmcore_lxmert.layers import (
    LAYER_NORM_EPS,
    CrossModalityLayer,
    SingleModalityLayer,
    attention_bias,
)
from mmcore_lxmert.pairs import LxmertPairEncoder

# Options that come from the dataset (DataInfo), not from a recipe.
DATA_FIELDS = ("vocab_size", "visual_feat_dim")


@dataclass(frozen=True)
class LxmertConfig:
    """Shape and options of an LXMERT encoder (LXMERT-S by default); vocabulary and feature sizes from DataInfo."""

    vocab_size: int
    visual_feat_dim: int
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    l_layers: int = 0
    x_layers: int = 5
    r_layers: int = 0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    visual_pos_dim: int = 4
    layer_norm_eps: float = LAYER_NORM_EPS
    initializer_range: float = 0.02
    visual_cls: bool = True
    product_pooler: bool = True
    whole_word_positions: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise MMCoreError(f"lxmert option {f.name!r} must be true or false, got {value!r}")
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise MMCoreError(f"lxmert option {f.name!r} must be a non-negative integer, got {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise MMCoreError(f"lxmert option {f.name!r} must be a number, got {value!r}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MMCoreError(f"lxmert option {name!r} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("vocab_size", "visual_feat_dim", "hidden_size", "num_attention_heads", "intermediate_size",
                     "x_layers", "max_position_embeddings", "type_vocab_size", "visual_pos_dim"):
            if getattr(self, name) < 1:
                raise MMCoreError(f"lxmert option {name!r} must be at least 1, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise MMCoreError(f"lxmert hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                              f"{self.num_attention_heads}")
        if self.layer_norm_eps <= 0:
            raise MMCoreError(f"lxmert option 'layer_norm_eps' must be positive, got {self.layer_norm_eps!r}")
        if self.product_pooler and not self.visual_cls:
            raise MMCoreError("lxmert option 'product_pooler' needs 'visual_cls' (it pools the visual [CLS] region)")

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Every option a recipe may set, with its default (all fields except the data-given dimensions)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in DATA_FIELDS}


class TextEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (transformers' ``LxmertEmbeddings``)."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None) -> Tensor:
        """Embed [B,T] ids; ``position_ids`` None means 0..T-1."""
        words = self.word_embeddings(input_ids)
        if position_ids is None:
            # A slice broadcasts over the batch: no arange tensor, no gather.
            positions = self.position_embeddings.weight[: input_ids.shape[1]]
        else:
            positions = self.position_embeddings(position_ids)
        # Every token has type 0 (one sentence per example), so the row broadcasts.
        return self.dropout(self.LayerNorm(words + positions + self.token_type_embeddings.weight[0]))


class VisualFeatureEncoder(nn.Module):
    """Region feature and box encoder: ``(LN(fc(feat)) + LN(fc(box))) / 2`` then dropout (``encoder.visn_fc``)."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        self.visn_fc = nn.Linear(config.visual_feat_dim, config.hidden_size)
        self.visn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.box_fc = nn.Linear(config.visual_pos_dim, config.hidden_size)
        self.box_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, feats: Tensor, boxes: Tensor) -> Tensor:
        """Encode [B,O,F] features and [B,O,4] boxes into [B,O,H]."""
        x = self.visn_layer_norm(self.visn_fc(feats))
        y = self.box_layer_norm(self.box_fc(boxes))
        return self.dropout((x + y) / 2)


class Encoder(nn.Module):
    """Visual encoder, language (``layer``) and relationship (``r_layers``) stacks, then ``x_layers``."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        c = config
        shape = (c.hidden_size, c.num_attention_heads, c.intermediate_size, c.attention_dropout, c.hidden_dropout,
                 c.layer_norm_eps)
        self.visn_fc = VisualFeatureEncoder(config)
        # `layer` (not `l_layers`) keeps BERT/transformers key names; both single-modality stacks are empty in
        # LXMERT-S.
        self.layer = nn.ModuleList(SingleModalityLayer(*shape) for _ in range(c.l_layers))
        self.x_layers = nn.ModuleList(CrossModalityLayer(*shape) for _ in range(c.x_layers))
        self.r_layers = nn.ModuleList(SingleModalityLayer(*shape) for _ in range(c.r_layers))

    def forward(self, lang: Tensor, lang_bias: Tensor, feats: Tensor, boxes: Tensor,
                visn_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """Run the stacks in LXMERT's order; returns the final language and vision streams."""
        visn = self.visn_fc(feats, boxes)
        for layer in self.layer:
            lang = layer(lang, lang_bias)
        for layer in self.r_layers:
            visn = layer(visn, visn_bias)
        for layer in self.x_layers:
            lang, visn = layer(lang, lang_bias, visn, visn_bias)
        return lang, visn


class Pooler(nn.Module):
    """``tanh(dense(x[:, 0]))`` on a stream's first ([CLS]) position."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        """Pool [B,S,H] to [B,H]."""
        return torch.tanh(self.dense(hidden[:, 0]))


class Lxmert(Backbone):
    """The LXMERT backbone (``lxmert`` 9/5/5, ``lxmert_s`` 0/5/0), optionally with LXMERT-S's extras."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config.hidden_size)
        self.visual_cls_embedding: nn.Parameter | None = None
        self.visn_pooler: Pooler | None = None
        if config.visual_cls:
            # The [CLS] region's raw feature (it passes through visn_fc like any region) and its whole-image box.
            self.visual_cls_embedding = nn.Parameter(torch.empty(config.visual_feat_dim))
            self.register_buffer("visual_cls_box", torch.tensor([0.0, 0.0, 1.0, 1.0]), persistent=False)
        if config.product_pooler:
            self.visn_pooler = Pooler(config.hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT initialisation: weights N(0, initializer_range), biases 0, LayerNorm 1/0."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.visual_cls_embedding is not None:
            nn.init.normal_(self.visual_cls_embedding, std=std)

    def word_embeddings(self) -> nn.Embedding:
        """The input word-embedding table (an MLM decoder ties its weights to it)."""
        return self.embeddings.word_embeddings

    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        # Attention runs in the autocast dtype when autocast is on; the additive bias must match it.
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.pooler.dense.weight.dtype

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by part (see :func:`parameter_counts`); ``transformer`` is the paper's Table 1 count."""
        return parameter_counts(self)

    def pair_encoder(self) -> LxmertPairEncoder:
        """Scores many (text, image) pairs doing each text's and each image's own work once (:mod:`.pairs`)."""
        return LxmertPairEncoder(self)

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual_feats: Tensor,
        visual_pos: Tensor,
        visual_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> BackboneOutput:
        """Encode a batch; ``vision`` never includes the visual [CLS] region, so it is always [B,O,H]."""
        if not self.config.whole_word_positions:
            position_ids = None
        elif position_ids is None:
            raise MMCoreError("backbone option 'whole_word_positions' is on but the batch has no 'position_ids'; "
                              "use the mmcore collator or set whole_word_positions: false")
        lang = self.embeddings(input_ids, position_ids)
        dtype = self._compute_dtype(lang.device)
        lang_bias = attention_bias(attention_mask, dtype)

        feats = visual_feats.to(self.encoder.visn_fc.visn_fc.weight.dtype)
        boxes = visual_pos.to(feats.dtype)
        if self.visual_cls_embedding is not None:
            batch = feats.shape[0]
            feats = torch.cat([self.visual_cls_embedding.expand(batch, 1, -1), feats], dim=1)
            boxes = torch.cat([self.visual_cls_box.to(boxes.dtype).expand(batch, 1, -1), boxes], dim=1)
            if visual_mask is not None:
                visual_mask = torch.cat([visual_mask.new_ones(batch, 1), visual_mask], dim=1)
        # Without a visual mask every region is real, and SDPA may pick a mask-free kernel.
        visn_bias = None if visual_mask is None else attention_bias(visual_mask, dtype)

        lang, visn = self.encoder(lang, lang_bias, feats, boxes, visn_bias)
        pooled = self.pooler(lang)
        if self.visn_pooler is not None:
            pooled = pooled * self.visn_pooler(visn)
        if self.visual_cls_embedding is not None:
            visn = visn[:, 1:]
        return BackboneOutput(text=lang, vision=visn, pooled=pooled)


def _numel(*modules: nn.Module | nn.Parameter | None) -> int:
    params = {}
    for m in modules:
        if isinstance(m, nn.Parameter):
            params[id(m)] = m
        elif m is not None:
            params.update((id(p), p) for p in m.parameters())
    return sum(p.numel() for p in params.values())


def parameter_counts(backbone: Lxmert) -> dict[str, int]:
    """Parameters by part; ``transformer`` is the paper's Table 1 count (visual feature encoder + all layers)."""
    encoder = backbone.encoder
    counts = {
        "visual_encoder": _numel(encoder.visn_fc),
        "language_layers": _numel(encoder.layer),
        "relationship_layers": _numel(encoder.r_layers),
        "cross_layers": _numel(encoder.x_layers),
        "transformer": _numel(encoder),
        "embeddings": _numel(backbone.embeddings),
        "poolers": _numel(backbone.pooler, backbone.visn_pooler),
    }
    if backbone.visual_cls_embedding is not None:
        counts["visual_cls"] = backbone.visual_cls_embedding.numel()
    counts["total"] = _numel(backbone)
    return counts


def count_parameters(model: nn.Module, transformer_only: bool) -> int:
    """Parameters of ``model``; ``transformer_only`` counts only the encoders of its Lxmert backbones.

    That is the paper's Table 1 convention: embeddings, poolers, the visual [CLS] vector and task heads excluded.
    Shared (tied) parameters count once.
    """
    if not transformer_only:
        return _numel(model)
    encoders = [m.encoder for m in model.modules() if isinstance(m, Lxmert)]
    if not encoders:
        raise ValueError(f"{type(model).__name__} contains no Lxmert backbone")
    return _numel(*encoders)
