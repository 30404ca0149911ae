"""Registers the ``synthworld`` dataset (the embedded default data)."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore_synth.dataset import SynthWorld


@mmcore.hookimpl
def mmcore_register_datasets(registry: Any) -> None:
    """Add ``synthworld``."""
    registry.add_dataset(SynthWorld)
