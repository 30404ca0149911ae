"""Registers the built-in downstream heads ``vqa`` and ``retrieval``."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore_heads.retrieval import RetrievalHead
from mmcore_heads.vqa import VQAHead


@mmcore.hookimpl
def mmcore_register_heads(registry: Any) -> None:
    """Add the ``vqa`` and ``retrieval`` heads."""
    registry.add_head(VQAHead)
    registry.add_head(RetrievalHead)
