"""``mmcore export RUN_DIR_OR_CHECKPOINT OUT_DIR [--stage S | --finetune F]``."""

from __future__ import annotations

from pathlib import Path

import click

from mmcore.errors import MMCoreError


@click.command(name="export")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--stage", help="Export this pre-training stage's model (default: the run's last stage).")
@click.option("--finetune", help="Export this fine-tuning's model (its selected epoch) and its head.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Data cache (default $MMCORE_CACHE).")
def export(target: Path, out: Path, stage: str | None, finetune: str | None, overwrite: bool,
           cache_dir: Path | None) -> None:
    """Export a run's model for transformers: OUT loads with LxmertModel.from_pretrained and
    AutoTokenizer.from_pretrained, and holds the head's weights, mmcore.json and a model card.

    TARGET is a run directory or a checkpoint file inside one.
    """
    from mmcore.console import err_console
    from mmcore.context import RunContext
    from mmcore.export import RESOLVED, check_export, export as export_run, find_source, run_of
    from mmcore.progress import Reporter
    from mmcore.recipeload import prepare_recipe
    from mmcore.rundir import RunDir

    if stage is not None and finetune is not None:
        raise MMCoreError("give --stage or --finetune, not both")
    run = run_of(target)
    _, plugins, resolved = prepare_recipe(run / RESOLVED)
    source = find_source(target, resolved, stage, finetune)
    check_export(source, out, overwrite)
    # On the CPU: the exported weights are written from there, and no accelerator is needed to export.
    ctx = RunContext.open({**resolved, "device": "cpu"}, plugins, RunDir(source.run), Reporter(err_console), cache_dir)
    manifest = export_run(ctx, source, out)
    err_console.print(f"exported {source.kind} {source.name} of {run} → {out}", highlight=False)
    for line in manifest["differences"]:
        err_console.print(f"[yellow]note:[/yellow] transformers does not reproduce {line}")
    click.echo(out)
