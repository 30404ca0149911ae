"""The ``wandb`` logger: a Weights & Biases run (offline by default: written under the run directory, no network;
``wandb sync`` uploads it later) with the resolved recipe as its config, every metric at its step, and
``summary.md`` and the plots as an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import mmcore
from mmcore import MMCoreError
from mmcore_loggers.runfiles import numeric_metrics, read_recipe, run_files

if TYPE_CHECKING:  # annotations only: the api module imports torch
    from mmcore.api import RunInfo

MODES = ("offline", "online", "disabled")


class WandbLogger:
    """One W&B run per mmcore run. Each scope (stage, fine-tuning) has its own x-axis ``<scope>/step``, because
    W&B's global step must only grow while every stage's steps start again at 1."""

    name = "wandb"
    defaults: ClassVar[dict[str, Any]] = {"project": "mmcore", "mode": "offline", "dir": ".", "entity": None,
                                          "run_name": None}
    option_types: ClassVar[dict[str, Any]] = {"entity": str | None, "run_name": str | None}

    def __init__(self, run_dir: Path, project: str = "mmcore", mode: str = "offline", dir: str = ".",  # noqa: A002
                 entity: str | None = None, run_name: str | None = None) -> None:
        if mode not in MODES:
            raise MMCoreError(f"logger wandb: mode must be one of {', '.join(MODES)}, got {mode!r}")
        try:
            import wandb
        except ImportError:
            raise MMCoreError('logger wandb needs the wandb package: pip install "mmcore-vlp[wandb]" '
                              "(or pip install wandb)") from None
        self.run_dir = Path(run_dir)
        root = Path(dir).expanduser()
        root = root if root.is_absolute() else self.run_dir / root
        recipe = read_recipe(self.run_dir)
        self._scopes: set[str] = set()
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(root), config=recipe,
                              name=run_name or f"{recipe.get('name', 'mmcore')}/{self.run_dir.name}",
                              reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    @mmcore.hookimpl
    def mmcore_log(self, run: RunInfo, step: int, metrics: dict[str, Any]) -> None:
        """Every numeric value of the record as ``<scope>/<name>``, plotted against ``<scope>/step``."""
        values = numeric_metrics(metrics)
        if not values:
            return
        scope = str(metrics.get("scope", "run"))
        if scope not in self._scopes:
            self._scopes.add(scope)
            self.run.define_metric(f"{scope}/step", hidden=True)
            self.run.define_metric(f"{scope}/*", step_metric=f"{scope}/step")
        self.run.log({**values, f"{scope}/step": int(step)})

    def close(self) -> None:
        """Log ``summary.md`` and the plots as one artifact (type ``run-files``), then finish the W&B run."""
        import wandb

        with run_files(self.run_dir) as files:
            if files:
                artifact = wandb.Artifact(f"run-files-{self.run.id}", type="run-files")
                for path in files:
                    artifact.add_file(str(path), name=path.name if path.suffix == ".md" else f"plots/{path.name}")
                self.run.log_artifact(artifact)
            self.run.finish(exit_code=0 if (self.run_dir / "summary.md").is_file() else 1)
