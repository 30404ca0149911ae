"""A finished run's plots as PNG files, for loggers that send them to an experiment tracker with the metrics."""

from __future__ import annotations

from pathlib import Path

__all__ = ["run_plots"]


def run_plots(run_dir: Path, out: Path) -> list[Path]:
    """Draw the loss-curve and downstream plots of the run in ``run_dir`` into ``out``, as ``mmcore report`` does,
    and return the PNG files; none without matplotlib (the ``plots`` extra) or the run's ``results.json``."""
    # The report loads every plugin and matplotlib: imported only when a run's plots are drawn.
    from mmcore.report import collect, layout_for, plots_available, write_report

    if not plots_available() or not (Path(run_dir) / "results.json").is_file():
        return []
    rows = collect([Path(run_dir)])
    written = write_report(rows, Path(out), layout_for(rows))
    return [path for path in written if path.suffix == ".png"]
