"""Registers the built-in downstream heads ``vqa``, ``gqa``, ``nlvr2`` and ``retrieval``."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore_heads.gqa import GQAHead
from mmcore_heads.nlvr2 import NLVR2Head
from mmcore_heads.retrieval import RetrievalHead
from mmcore_heads.vqa import VQAHead


@mmcore.hookimpl
def mmcore_register_heads(registry: Any) -> None:
    """Add the ``vqa``, ``gqa``, ``nlvr2`` and ``retrieval`` heads."""
    registry.add_head(VQAHead)
    registry.add_head(GQAHead)
    registry.add_head(NLVR2Head)
    registry.add_head(RetrievalHead)
