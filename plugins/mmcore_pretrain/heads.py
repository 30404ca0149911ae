"""Prediction heads owned by the pre-training tasks (BERT/LXMERT shapes, BERT initialisation)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmcore.api import init_bert_

LAYER_NORM_EPS = 1e-12


def transform(hidden: int, out: int | None = None) -> nn.Sequential:
    """Linear(hidden, out) -> GeLU -> LayerNorm(out), the shared first half of BERT/LXMERT heads."""
    out = hidden if out is None else out
    return init_bert_(nn.Sequential(nn.Linear(hidden, out), nn.GELU(), nn.LayerNorm(out, eps=LAYER_NORM_EPS)))


def regression_head(hidden: int, out: int) -> nn.Sequential:
    """Linear(H,H) -> GeLU -> LayerNorm -> Linear(H,out): MRFR's and IFRS's feature regressor."""
    return init_bert_(nn.Sequential(*transform(hidden), nn.Linear(hidden, out)))


class TiedLMHead(nn.Module):
    """MLM head: transform, then a decoder whose weight is the (tied) word-embedding table, plus a bias."""

    def __init__(self, hidden: int, embedding_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = transform(hidden, embedding_dim)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor, embedding_weight: Tensor) -> Tensor:
        """Vocabulary logits [N,V] for hidden states [N,H]."""
        return F.linear(self.transform(hidden), embedding_weight, self.bias)


class ObjectHead(nn.Module):
    """MOC head: transform, then object-label and attribute-label classifiers."""

    def __init__(self, hidden: int, num_objects: int, num_attributes: int) -> None:
        super().__init__()
        self.transform = transform(hidden)
        self.objects = init_bert_(nn.Linear(hidden, num_objects))
        self.attributes = init_bert_(nn.Linear(hidden, num_attributes))

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(object logits, attribute logits) for region states [..., H]."""
        h = self.transform(hidden)
        return self.objects(h), self.attributes(h)


def topic_head(hidden: int, vocab_size: int) -> nn.Sequential:
    """LXMERT-S topic head: Linear(H,V) -> GeLU -> LayerNorm(V); its output are BCE logits."""
    return transform(hidden, vocab_size)
