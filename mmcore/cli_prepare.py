"""``mmcore data prepare`` (images + JSONL annotations -> a ready dataset directory) and ``mmcore data check``
(counts, answer coverage, unknown images, the question-only baseline). Formats: docs/your-data.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmcore.data.datacheck import CheckReport, QuestionPrior, check, prior_score, report_dict
from mmcore.data.extract import build_extractor
from mmcore.data.prepare import (
    NORMALISATIONS,
    QUESTION_KINDS,
    PrepareOptions,
    answer_table,
    is_prepared,
    prepare,
    read_annotations,
    read_manifest,
)
from mmcore.data.store import FeatureStore
from mmcore.data.userdata import IMAGES_DIR, list_image_files, read_source
from mmcore.errors import MMCoreError
from mmcore.progress import Reporter
from mmcore.console import err_console



@click.command(name="prepare")
@click.argument("source", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--extractor", "extractor_name",
              help="A registered extractor (mmcore data extractors) for SOURCE/images/, e.g. grid.")
@click.option("--option", "extractor_options", multiple=True, metavar="KEY=VALUE",
              help="An extractor option, value parsed as YAML (repeatable), e.g. --option grid_size=4.")
@click.option("--features", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Use this existing feature store instead of extracting SOURCE/images/.")
@click.option("--tokenizer", type=click.Path(file_okay=False, path_type=Path),
              help="A local Hugging Face tokenizer directory, or the Hub id of one in the local Hugging Face cache "
                   "(default: build a WordPiece vocabulary).")
@click.option("--vocab-size", type=click.IntRange(min=16), default=8000, show_default=True,
              help="Size of the WordPiece vocabulary built from the training texts.")
@click.option("--min-answer-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep answers given at least this often in training in the answer table.")
@click.option("--normalise", type=click.Choice(NORMALISATIONS), default="standardise", show_default=True,
              help="Standardise every feature dimension over the training images' regions, or keep them as they are.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare_command(source: Path, output: Path, extractor_name: str | None, extractor_options: tuple[str, ...],
                    features: Path | None, tokenizer: Path | None, vocab_size: int, min_answer_count: int,
                    normalise: str, overwrite: bool, quiet: bool) -> None:
    """Turn SOURCE (images/ and <kind>.jsonl annotation files) into the dataset directory OUTPUT: features,
    vocabulary, answer tables, hard negatives. Built in OUTPUT.partial and renamed when done; re-running after
    an interruption resumes the extraction."""
    extractor = None
    if features is None:
        if not extractor_name:
            raise MMCoreError("give --extractor NAME to extract SOURCE/images/ (mmcore data extractors lists them), "
                              "or --features STORE.h5")
        extractor = build_extractor(extractor_name, extractor_options)
    options = PrepareOptions(extractor=extractor, features=features, tokenizer=tokenizer, vocab_size=vocab_size,
                             min_answer_count=min_answer_count, normalise=normalise)
    manifest = prepare(source, output, options, Reporter(err_console, quiet=quiet), overwrite=overwrite)
    counts = ", ".join(f"{kind} {sum(s.values()):,}" for kind, s in manifest["counts"].items())
    click.echo(f"wrote {output}: {manifest['images']:,} images ({manifest['max_regions']} regions of "
               f"{manifest['feature_dim']}-d features), {counts}; check it with `mmcore data check {output}`")


@click.command(name="check")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_command(dataset: Path, as_json: bool) -> None:
    """Report counts, answer coverage, unknown images and the question-only baseline of DATASET: a prepared
    dataset directory, a source folder (images/ + JSONL), or a recipe (every view of its datasets).

    Exits with code 2 when an annotation names an image that does not exist."""
    if dataset.is_file():
        _check_recipe(dataset, as_json)
        return
    report = check_directory(dataset)
    if as_json:
        click.echo(json.dumps(report_dict(report), indent=1))
    else:
        _print(report, str(dataset))
    if report.unknown_images:
        shown = "; ".join(report.unknown_images[:5])
        raise MMCoreError(f"{len(report.unknown_images)} annotation(s) name an unknown image: {shown}"
                          f"{' ...' if len(report.unknown_images) > 5 else ''}")


def check_directory(directory: Path) -> CheckReport:
    """The report of a prepared dataset directory or a source folder."""
    if is_prepared(directory):
        manifest = read_manifest(directory)
        annotations = read_annotations(directory)
        known = set(FeatureStore(directory / manifest["features"], cache="disk").ids())
        tables = {k: json.loads((directory / f).read_text()) for k, f in manifest["answers"].items()}
        return check(annotations, known, tables)
    annotations = read_source(directory)
    known = set(list_image_files(directory / IMAGES_DIR)) if (directory / IMAGES_DIR).is_dir() else None
    tables = {k: answer_table(annotations, k) for k in QUESTION_KINDS if annotations.of(k, "train")}
    return check(annotations, known, tables)


def _print(report: CheckReport, title: str) -> None:
    table = Table(title=escape(title), title_justify="left")
    for column in ("kind", "split", "records", "answerable %", "question-only %", "question-only by type %"):
        table.add_column(column, justify="left" if column in ("kind", "split") else "right")
    for row in report.rows():
        table.add_row(*row)
    console = Console(width=200)
    console.print(table)
    images = ", ".join(f"{s} {n:,}" for s, n in report.images.items())
    console.print(f"images: {images}; {report.unused_images:,} image(s) named by no annotation; "
                  f"{len(report.unknown_images):,} annotation(s) name an unknown image; id collisions: none "
                  "(image ids are paths under images/, question ids unique per split)", highlight=False)
    for kind, chance in report.chance.items():
        if chance:
            console.print(f"{kind} chance by type %: " + ", ".join(f"{t} {100 * c:.1f}" for t, c in chance.items()),
                          highlight=False)


def _check_recipe(path: Path, as_json: bool) -> None:
    """Counts and the question-only baseline of every view of a recipe's datasets (any dataset plugin)."""
    from mmcore.recipeload import prepare_recipe
    from mmcore.context import default_cache_dir

    _, plugins, resolved = prepare_recipe(path)
    out: dict[str, Any] = {}
    for name, options in resolved["datasets"].items():
        entry = plugins.registry.get("dataset", name)
        data = entry.factory(options, default_cache_dir())
        data.prepare(None)
        out[name] = {view: _view_figures(data, view) for view in entry.provides}
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    for name, views in out.items():
        for view, splits in views.items():
            for split, figures in splits.items():
                extra = "".join(f", {k} {100 * v:.2f}%" for k, v in figures.items() if k != "records")
                click.echo(f"{name} {view}/{split}: {figures['records']:,} records{extra}")


def _view_figures(data: Any, view_name: str) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    views = {}
    for split in data.splits:
        try:
            views[split] = data.view(view_name, split)
        except MMCoreError:
            continue  # the dataset has no such split of this view
        figures[split] = {"records": len(views[split])}
    train = views.get("train")
    if train is None or not hasattr(train, "labels") or not hasattr(train, "answers"):
        return figures
    prior = QuestionPrior.fit((text, None, label) for (_, text), label in zip(train.pairs, train.labels))
    for split, view in views.items():
        table = set(view.answers)
        labels = view.labels
        figures[split]["answerable"] = sum(any(a in table for a in lab) for lab in labels) / max(1, len(labels))
        if split != "train":
            questions = [(text, None, label) for (_, text), label in zip(view.pairs, labels)]
            figures[split]["question_only"] = prior_score(prior, questions).get("all", 0.0)
    return figures
