"""Registers the ``tensorboard`` logger (the ``tensorboard`` package is needed only when a run enables it)."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore_loggers.tensorboard_logger import TensorBoardLogger


@mmcore.hookimpl
def mmcore_register_loggers(registry: Any) -> None:
    """Add ``tensorboard``."""
    registry.add_logger(TensorBoardLogger.name, TensorBoardLogger, defaults=TensorBoardLogger.defaults)
