"""Built-in metrics loggers, each needing its library only when a run enables it: ``tensorboard``
(``pip install "mmcore-vlp[tensorboard]"``), ``mlflow`` (``mmcore-vlp[mlflow]``) and ``wandb``
(``mmcore-vlp[wandb]``)."""
