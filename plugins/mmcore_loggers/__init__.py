"""Built-in metrics loggers: ``tensorboard`` (needs the ``tensorboard`` package: ``pip install "mmcore-vlp[tensorboard]"``)."""
