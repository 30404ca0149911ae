"""Registers the ``lxmert`` dataset (real data in LXMERT's layout)."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore_lxmert_data.dataset import LxmertData


@mmcore.hookimpl
def mmcore_register_datasets(registry: Any) -> None:
    """Add ``lxmert``."""
    registry.add_dataset(LxmertData)
