"""The ``mlflow`` logger: the resolved recipe as parameters, every metric at its step, ``summary.md`` and the plots as
artifacts, in an MLflow tracking store (a local folder by default: no server needed)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import mmcore
from mmcore import MMCoreError
from mmcore.data.fileio import write_json
from mmcore_loggers.runfiles import flat_params, numeric_metrics, read_recipe, run_files

if TYPE_CHECKING:  # annotations only: the api module imports torch
    from mmcore.api import RunInfo

# MLflow's limits: values of at most 6000 characters, at most 100 parameters and 1000 metrics per batch.
MAX_VALUE, PARAM_BATCH, METRIC_BATCH = 6000, 100, 1000
RUN_ID_FILE = "mlflow_run.json"  # a resumed run continues the same MLflow run


class MlflowLogger:
    """An MLflow run per mmcore run: recipe parameters, ``<scope>/<metric>`` at each record's step, files at the end."""

    name = "mlflow"
    defaults: ClassVar[dict[str, Any]] = {"tracking_uri": "mlruns", "experiment": None, "run_name": None}
    option_types: ClassVar[dict[str, Any]] = {"experiment": str | None, "run_name": str | None}

    def __init__(self, run_dir: Path, tracking_uri: str = "mlruns", experiment: str | None = None,
                 run_name: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MMCoreError('logger mlflow needs the mlflow package: pip install "mmcore-vlp[mlflow]" '
                              "(or pip install mlflow-skinny)") from None
        self.run_dir = Path(run_dir)
        self.uri = tracking_uri_for(self.run_dir, tracking_uri)
        if self.uri.startswith("file:"):
            # MLflow 3 keeps its folder store in maintenance mode behind this opt-in; it needs no server and no
            # database, which is the point of the default. Any other tracking URI (sqlite:///..., http://...) works.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        recipe = read_recipe(self.run_dir)
        self.run_id = self._resume() or self._start(recipe, experiment, run_name)

    def _start(self, recipe: dict[str, Any], experiment: str | None, run_name: str | None) -> str:
        name = experiment or str(recipe.get("name") or "mmcore")
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=run_name or self.run_dir.name,
                                     tags={"mmcore.run_dir": str(self.run_dir.resolve())})
        from mlflow.entities import Param

        params = [Param(k, v[:MAX_VALUE]) for k, v in flat_params(recipe).items()]
        for start in range(0, len(params), PARAM_BATCH):
            self.client.log_batch(run.info.run_id, params=params[start:start + PARAM_BATCH])
        write_json(self.run_dir / RUN_ID_FILE, {"run_id": run.info.run_id, "tracking_uri": self.uri})
        return str(run.info.run_id)

    def _resume(self) -> str | None:
        path = self.run_dir / RUN_ID_FILE
        if not path.is_file():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("tracking_uri") != self.uri:
            return None
        self.client.update_run(saved["run_id"], status="RUNNING")
        return str(saved["run_id"])

    @mmcore.hookimpl
    def mmcore_log(self, run: RunInfo, step: int, metrics: dict[str, Any]) -> None:
        """Every numeric value of the record as the metric ``<scope>/<name>`` at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, int(step)) for key, value in numeric_metrics(metrics).items()]
        for start in range(0, len(batch), METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start:start + METRIC_BATCH])

    def close(self) -> None:
        """Send ``summary.md`` and the plots (under ``plots/``), then mark the MLflow run finished."""
        with run_files(self.run_dir) as files:
            for path in files:
                self.client.log_artifact(self.run_id, str(path), None if path.suffix == ".md" else "plots")
        finished = (self.run_dir / "summary.md").is_file()
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "FAILED")


def tracking_uri_for(run_dir: Path, uri: str) -> str:
    """A URI as given (``http://``, ``sqlite:///``, ``file:``), or a folder, relative to the run directory."""
    if "://" in uri or uri.startswith("file:"):
        return uri
    path = Path(uri).expanduser()
    return (path if path.is_absolute() else run_dir / path).resolve().as_uri()
