"""Registers the ``pairs`` dataset and the ``mmcore new recipe`` command."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore_pairs.dataset import Pairs
from mmcore_pairs.newrecipe import new


@mmcore.hookimpl
def mmcore_register_datasets(registry: Any) -> None:
    """Add ``pairs``."""
    registry.add_dataset(Pairs)


@mmcore.hookimpl
def mmcore_register_commands(cli: Any) -> None:
    """Add ``mmcore new recipe``."""
    cli.add_command(new)
