"""Registers the ``tensorboard``, ``mlflow`` and ``wandb`` loggers (each library is needed only when a run enables
its logger)."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore_loggers.mlflow_logger import MlflowLogger
from mmcore_loggers.tensorboard_logger import TensorBoardLogger
from mmcore_loggers.wandb_logger import WandbLogger


@mmcore.hookimpl
def mmcore_register_loggers(registry: Any) -> None:
    """Add ``tensorboard``, ``mlflow`` and ``wandb``."""
    for logger in (TensorBoardLogger, MlflowLogger, WandbLogger):
        registry.add_logger(logger.name, logger, defaults=logger.defaults)
