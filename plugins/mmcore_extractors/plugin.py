"""Registers the extractors ``grid`` and ``torchvision_detector`` (the latter needs torchvision only when used)."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore_extractors.detector import TorchvisionDetector
from mmcore_extractors.grid import GridExtractor


@mmcore.hookimpl
def mmcore_register_extractors(registry: Any) -> None:
    """Add ``grid`` and ``torchvision_detector``."""
    for cls in (GridExtractor, TorchvisionDetector):
        registry.add_extractor(cls.name, cls, defaults=cls.defaults)
