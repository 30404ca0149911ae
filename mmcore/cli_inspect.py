"""``mmcore inspect RUN_DIR --example QID``: one question and one image across the run's pre-training stages, as
a table, ``inspect_<id>.md``, ``.json`` and ``.png`` (the MSP paper's Figures 3 and 4)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mmcore.errors import MMCoreError
from mmcore.report import PLOTS_HINT, plots_available
from mmcore.runfinder import RESOLVED


@click.command(name="inspect")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--example", "question_id", required=True, metavar="QID",
              help="The question id (e.g. from finetune/<name>/predictions.json).")
@click.option("--caption-image", metavar="IMG_ID",
              help="The image whose top-1 caption is shown (default: the question's image, if the caption head's split "
                   "has it, else its first image).")
@click.option("--split", help="The split of the question (default: the fine-tuning's eval_split).")
@click.option("--head", "answer_head",
              help="The answer head (default: the first fine-tuned head that predicts labels).")
@click.option("--caption-head", help="The caption-ranking head (default: the first evaluated head that scores "
                                     "text-image pairs).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for inspect_<id>.md/.json/.png (default RUN_DIR/inspect).")
@click.option("--device", help="Override the recipe's device (cpu, cuda, cuda:N, auto).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Data cache (default $MMCORE_CACHE).")
def inspect(run_dir: Path, question_id: str, caption_image: str | None, split: str | None, answer_head: str | None,
            caption_head: str | None, out: Path | None, device: str | None, cache_dir: Path | None) -> None:
    """Show one question's top-3 answers and one image's top-1 caption after each pre-training stage.

    Answers come from the answer head fine-tuned from that stage (`init: <stage>` in the recipe; the last stage's
    is the default fine-tuning); captions from the retrieval head fine-tuned from it, else from the stage's
    pre-trained matching head (zero-shot). Example: mmcore inspect runs/inspect_msp/<run> --example 160002
    """
    from mmcore.console import err_console, stdout_console
    from mmcore.context import RunContext
    from mmcore.inspect import answer_text, caption_text, inspect_example, write_outputs
    from mmcore.progress import Reporter
    from mmcore.recipeload import prepare_recipe
    from mmcore.rundir import RunDir
    from mmcore.validate import DEVICE

    if not (run_dir / RESOLVED).is_file():
        raise MMCoreError(f"{run_dir} is not a run directory (no {RESOLVED}); give the folder `mmcore run` "
                          "wrote, e.g. runs/<recipe>/<timestamp>")
    _, plugins, resolved = prepare_recipe(run_dir / RESOLVED)
    if device:
        if not DEVICE.match(device):
            raise MMCoreError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
        resolved["device"] = device
    ctx = RunContext.open(resolved, plugins, RunDir.open(run_dir), Reporter(err_console, quiet=True), cache_dir)
    ins = inspect_example(ctx, question_id, caption_image, answer_head=answer_head,
                          caption_head=caption_head, split=split)
    gold = ", ".join(f"{a} ({s:.1f})" for a, s in ins.gold.items()) or "(none)"
    table = Table(title=escape(f"Q{ins.question_id} ({ins.data}, image {ins.image_id}): {ins.question} — gold: {gold}"))
    columns = ["after stage", "curriculum", "heads (answers / captions)", "top answers (probability; gold in green)",
               "top-1 caption"]
    for column in columns:
        table.add_column(column)
    for row in ins.rows:
        answers = answer_text(row.answers, ins.gold, mark=lambda s: f"[bold green]{escape(s)}[/bold green]", plain=escape)
        caption = "–" if ins.caption_image is None else escape(caption_text(row.caption))
        heads = f"{row.answers.source or '–'} / {row.caption.source or '–'}"
        table.add_row(escape(row.stage), escape(row.curriculum), escape(heads), answers, caption)
    console = stdout_console()
    console.print(table)
    if ins.caption_image is not None:
        console.print(escape(f"captions ranked for image {ins.caption_image} among every caption of {ins.caption_data}"),
                      highlight=False)
    written = write_outputs(ins, out or run_dir / "inspect", PLOTS_HINT)
    err_console.print(escape(f"wrote {', '.join(str(p) for p in written)}"), highlight=False, soft_wrap=True)
    if not plots_available():
        err_console.print(f"[yellow]no PNG: {escape(PLOTS_HINT)}[/yellow]")
