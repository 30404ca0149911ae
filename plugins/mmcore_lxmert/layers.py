"""LXMERT's transformer blocks, with attention through ``torch.nn.functional.scaled_dot_product_attention``.

Module and attribute names mirror transformers' ``modeling_lxmert`` so that state-dict keys line up one to one
(``visual_attention.att.query``, ``lang_self_att.self.key``, ``lang_output.LayerNorm``, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_NORM_EPS = 1e-12


def attention_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """An additive key-padding bias [B,1,1,S] from a 0/1 mask [B,S]: 0 where 1, the dtype's minimum where 0."""
    # The finite minimum (not -inf) keeps a row whose keys are all padding finite (uniform weights), as
    # transformers does, instead of producing NaN.
    keep = mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class MultiHeadAttention(nn.Module):
    """Multi-head attention of ``hidden`` over ``context`` (names as transformers' ``LxmertAttention``)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout_p = dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: Tensor, context: Tensor, bias: Tensor | None) -> Tensor:
        """Attend from ``hidden`` [B,Lq,H] to ``context`` [B,Lk,H] with an additive ``bias`` [B,1,1,Lk]."""
        return self.attend(self.query(hidden), self.key(context), self.value(context), bias)

    def attend(self, query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None) -> Tensor:
        """Attention from projected queries [B,Lq,H] to projected keys and values [B,Lk,H] (the part of
        :meth:`forward` after the projections, for callers that projected once and reuse the projections)."""
        batch, q_len, width = query.shape
        k_len = key.shape[1]
        q = query.view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = key.view(batch, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        v = value.view(batch, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        if bias is not None and bias.dtype != q.dtype:
            # Safety net for mixed dtypes; the backbone normally builds the bias in the compute dtype already.
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout_p if self.training else 0.0
        )
        return out.transpose(1, 2).reshape(batch, q_len, width)


class AttentionOutput(nn.Module):
    """Projection, dropout, residual and LayerNorm after attention (transformers' ``LxmertAttentionOutput``)."""

    def __init__(self, hidden_size: int, dropout: float, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        """``LayerNorm(dropout(dense(hidden)) + residual)``."""
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class CrossAttentionBlock(nn.Module):
    """Attention to the other stream plus its output block (``visual_attention.{att,output}``)."""

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float, hidden_dropout: float,
                 eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.att = MultiHeadAttention(hidden_size, num_heads, attention_dropout)
        self.output = AttentionOutput(hidden_size, hidden_dropout, eps)

    def forward(self, hidden: Tensor, context: Tensor, context_bias: Tensor | None) -> Tensor:
        """One stream attends to the other; residual on ``hidden``."""
        return self.output(self.att(hidden, context, context_bias), hidden)


class SelfAttentionBlock(nn.Module):
    """Self-attention plus its output block (``*_self_att.{self,output}``)."""

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float, hidden_dropout: float,
                 eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.self = MultiHeadAttention(hidden_size, num_heads, attention_dropout)
        self.output = AttentionOutput(hidden_size, hidden_dropout, eps)

    def forward(self, hidden: Tensor, bias: Tensor | None, first_only: bool = False) -> Tensor:
        """A stream attends to itself; residual on ``hidden``. ``first_only``: the output of position 0 only
        [B,1,H] (it still attends to every position)."""
        query = hidden[:, :1] if first_only else hidden
        return self.output(self.self(query, hidden, bias), query)


class Intermediate(nn.Module):
    """The first feed-forward projection with GeLU (transformers' ``LxmertIntermediate``)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, hidden: Tensor) -> Tensor:
        """``gelu(dense(hidden))`` (exact, erf-based GeLU as BERT/LXMERT)."""
        return F.gelu(self.dense(hidden))


class FeedForwardOutput(nn.Module):
    """The second feed-forward projection, dropout, residual and LayerNorm (transformers' ``LxmertOutput``)."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        """``LayerNorm(dropout(dense(hidden)) + residual)``."""
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class SingleModalityLayer(nn.Module):
    """A BERT layer for the language (``encoder.layer``) or relationship (``encoder.r_layers``) stacks."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, attention_dropout: float,
                 hidden_dropout: float, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.attention = SelfAttentionBlock(hidden_size, num_heads, attention_dropout, hidden_dropout, eps)
        self.intermediate = Intermediate(hidden_size, intermediate_size)
        self.output = FeedForwardOutput(hidden_size, intermediate_size, hidden_dropout, eps)

    def forward(self, hidden: Tensor, bias: Tensor | None) -> Tensor:
        """Self-attention then feed-forward."""
        hidden = self.attention(hidden, bias)
        return self.output(self.intermediate(hidden), hidden)


class CrossModalityLayer(nn.Module):
    """An LXMERT cross-modality layer: shared cross-attention, then self-attention and feed-forward per stream."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, attention_dropout: float,
                 hidden_dropout: float, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        # One module serves both directions (language->vision and vision->language), as in LXMERT.
        self.visual_attention = CrossAttentionBlock(hidden_size, num_heads, attention_dropout, hidden_dropout, eps)
        self.lang_self_att = SelfAttentionBlock(hidden_size, num_heads, attention_dropout, hidden_dropout, eps)
        self.visn_self_att = SelfAttentionBlock(hidden_size, num_heads, attention_dropout, hidden_dropout, eps)
        self.lang_inter = Intermediate(hidden_size, intermediate_size)
        self.lang_output = FeedForwardOutput(hidden_size, intermediate_size, hidden_dropout, eps)
        self.visn_inter = Intermediate(hidden_size, intermediate_size)
        self.visn_output = FeedForwardOutput(hidden_size, intermediate_size, hidden_dropout, eps)

    def forward(self, lang: Tensor, lang_bias: Tensor | None, visn: Tensor,
                visn_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """Update both streams; each bias masks the padded keys of its own stream."""
        lang_x = self.visual_attention(lang, visn, visn_bias)
        visn_x = self.visual_attention(visn, lang, lang_bias)
        return self.after_cross(lang_x, lang_bias, visn_x, visn_bias)

    def cross_projections(self, stream: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The shared cross-attention's (query, key, value) projections of one stream: they depend on that stream
        alone, so a caller pairing many texts with many images computes them once per text and per image."""
        att = self.visual_attention.att
        return att.query(stream), att.key(stream), att.value(stream)

    def forward_projected(self, lang: Tensor, lang_qkv: tuple[Tensor, Tensor, Tensor], lang_bias: Tensor | None,
                          visn: Tensor, visn_qkv: tuple[Tensor, Tensor, Tensor], visn_bias: Tensor | None,
                          first_only: bool = False) -> tuple[Tensor, Tensor]:
        """:meth:`forward` from the streams' :meth:`cross_projections`; ``first_only`` returns position 0 of
        each stream only ([B,1,H]: all a pooler reads of the last layer)."""
        block = self.visual_attention
        lang_x = block.output(block.att.attend(lang_qkv[0], visn_qkv[1], visn_qkv[2], visn_bias), lang)
        visn_x = block.output(block.att.attend(visn_qkv[0], lang_qkv[1], lang_qkv[2], lang_bias), visn)
        return self.after_cross(lang_x, lang_bias, visn_x, visn_bias, first_only)

    def after_cross(self, lang_x: Tensor, lang_bias: Tensor | None, visn_x: Tensor, visn_bias: Tensor | None,
                    first_only: bool = False) -> tuple[Tensor, Tensor]:
        """Self-attention and feed-forward of each stream after the cross-attention (``first_only``: position 0)."""
        lang_x = self.lang_self_att(lang_x, lang_bias, first_only)
        visn_x = self.visn_self_att(visn_x, visn_bias, first_only)
        return self.lang_output(self.lang_inter(lang_x), lang_x), self.visn_output(self.visn_inter(visn_x), visn_x)
