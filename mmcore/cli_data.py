"""``mmcore data``: convert released region features or extract them from images into a feature store, and compute
or import hard negatives."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mmcore.data.extract import extract_folder, parse_options
from mmcore.data.hardneg import (
    nearest_images_torch,
    read_vilbert_pool,
    save_hard_negatives,
)
from mmcore.data.hubness import balancing_weights, text_blind_loss
from mmcore.data.images import image_decoder, list_images
from mmcore.data.store import FeatureStore
from mmcore.data.tsv import FEATURE_DTYPES, convert_tsv
from mmcore.errors import MMCoreError
from mmcore.blame import blame
from mmcore.plugins import load_plugins
from mmcore.progress import Reporter
from mmcore.console import err_console



@click.group(name="data")
def data() -> None:
    """Prepare real data: convert TSV region features, extract features from images, compute or import hard
    negatives."""


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so a killed conversion still removes its temporary file."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner's worker): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@data.command(name="convert-tsv")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dtype", type=click.Choice(FEATURE_DTYPES), default="float16", show_default=True,
              help="Stored feature precision.")
@click.option("--feature-dim", type=click.IntRange(min=1), help="Expected feature width (default: the first image's).")
@click.option("--max-boxes", type=click.IntRange(min=1),
              help="Regions per image to reserve (default: the first image's; grows if a later image has more).")
@click.option("--verify", is_flag=True, help="Re-read the finished store and check counts, shapes and values.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def convert_tsv_command(paths: tuple[Path, ...], dtype: str, feature_dim: int | None, max_boxes: int | None,
                        verify: bool, overwrite: bool, quiet: bool) -> None:
    """Convert bottom-up-attention TSV files IN.tsv [IN2.tsv ...] into one feature store OUT.h5.

    Streams line by line (memory does not grow with the file), writes OUT.h5.tmp and renames it only when
    complete: an error or interruption leaves no store, and re-running starts afresh.
    """
    if len(paths) < 2:
        raise MMCoreError("give one or more input TSV files and then the output store: IN.tsv [IN2.tsv ...] OUT.h5")
    inputs, output = list(paths[:-1]), paths[-1]
    total = sum(p.stat().st_size for p in inputs if p.is_file())
    live = not quiet and err_console.is_terminal
    progress = Progress(TextColumn("[bold]convert-tsv"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=not live)
    start = time.perf_counter()
    with progress, _terminate_as_exit():
        task = progress.add_task("convert", total=total, info="")

        def advance(done_bytes: int, images: int) -> None:
            rate = images / max(time.perf_counter() - start, 1e-9)
            progress.update(task, completed=done_bytes, info=f"{images:,} images, {rate:,.0f} images/s")

        result = convert_tsv(inputs, output, dtype=dtype, feature_dim=feature_dim, max_boxes=max_boxes,
                             verify=verify, overwrite=overwrite, progress=advance)
    if not quiet:
        for name, count in result.per_file.items():
            err_console.print(f"  {name}: {count:,} images", highlight=False)
    click.echo(f"wrote {result.path}: {result.images:,} images, up to {result.max_boxes} regions of "
               f"{result.feature_dim}-d {result.dtype} features, in {result.seconds:.1f}s "
               f"({result.images_per_second:,.0f} images/s){'; verified' if verify else ''}")


@data.command(name="extract")
@click.argument("images_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--extractor", "name", required=True, help="A registered extractor (mmcore data extractors).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="An extractor option, value parsed as YAML (repeatable), e.g. --option grid_size=6.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per extractor call.")
@click.option("--skip-bad", is_flag=True, help="Count and skip unreadable images instead of stopping.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract_command(images_dir: Path, output: Path, name: str, options: tuple[str, ...], batch_size: int,
                    skip_bad: bool, overwrite: bool, quiet: bool) -> None:
    """Extract region features of every JPEG/PNG in IMAGES_DIR into the feature store OUTPUT.h5.

    The image id is the file name without its extension. The store is complete or absent: it is written under a
    temporary name and renamed at the end. Label names the extractor writes go next to it
    (OUTPUT.objects_vocab.txt, OUTPUT.attributes_vocab.txt).
    """
    registry = load_plugins().registry
    entry = registry.get("extractor", name)
    # Cheap checks first: building an extractor may load a detector.
    total = len(list_images(images_dir))
    if output.exists() and not overwrite:
        raise MMCoreError(f"{output} already exists; pass --overwrite to replace it")
    image_decoder()
    with blame(registry, entry, "__init__", "mmcore data extract"):
        extractor = entry.factory(parse_options(options, entry.defaults, name))
    reporter = Reporter(err_console, quiet=quiet)
    start = time.perf_counter()
    with reporter.bar(f"extract ({name})", total) as bar, _terminate_as_exit():
        def advance(done: int, skipped: int) -> None:
            info = _rate(done, time.perf_counter() - start) + (f", {skipped} skipped" if skipped else "")
            bar.advance(done - bar.done, info=info)

        with blame(registry, entry, "extract", "mmcore data extract"):
            result = extract_folder(images_dir, output, extractor, batch_size=batch_size, skip_bad=skip_bad,
                                    overwrite=overwrite, progress=advance)
    for path, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(reason)}", highlight=False)
    vocab = "".join(f"; {kind} names in {path}" for kind, path in result.vocabularies.items())
    click.echo(f"wrote {result.path}: {result.images:,} images, up to {result.max_boxes} regions of "
               f"{result.feature_dim}-d features ({name}, images read with {result.decoder}), in "
               f"{result.seconds:.1f}s ({_rate(result.images, result.seconds)})"
               f"{f'; {len(result.skipped)} unreadable skipped' if result.skipped else ''}{vocab}")


def _rate(images: int, seconds: float) -> str:
    """``12.3 images/s``, or ``4.2 s/image`` for slow extractors (a detector on a CPU)."""
    rate = images / max(seconds, 1e-9)
    return f"{rate:,.1f} images/s" if rate >= 1 or images == 0 else f"{seconds / images:,.1f} s/image"


@data.command(name="extractors")
@click.option("--verbose", "-v", is_flag=True, help="The long form: each one's docstring and option table.")
def extractors_command(verbose: bool) -> None:
    """List the registered extractors with their options (type, default); --verbose for the long form."""
    from mmcore.describe import entries_table, long_form

    console = Console(width=max(Console().width, 160))  # piped output keeps whole columns
    plugins = load_plugins()
    entries = list(plugins.registry.entries("extractor"))
    if not verbose:
        console.print(entries_table("extractor", entries))
    for entry in entries if verbose else ():
        console.print(long_form(entry, plugins.label(entry.origin)))


@data.command(name="hard-negatives")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=100, show_default=True,
              help="Nearest images kept per image.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--chunk", type=click.IntRange(min=1), help="Rows per distance block (default: fit --memory-mb).")
@click.option("--memory-mb", type=click.IntRange(min=1), default=256, show_default=True,
              help="Bound on one distance block.")
@click.option("--from-vilbert", "vilbert", type=click.Path(dir_okay=False, path_type=Path),
              help="Import ViLBERT's pickled hard-negative file instead of computing (needs --trust-pickle).")
@click.option("--trust-pickle", is_flag=True, help="Allow reading the pickle given to --from-vilbert.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def hard_negatives_command(paths: tuple[Path, ...], top: int, device: str, chunk: int | None, memory_mb: int,
                           vilbert: Path | None, trust_pickle: bool, overwrite: bool, quiet: bool) -> None:
    """Write the hard-negative file OUT.npz. STORE [STORE ...] OUT: each image's nearest images among all the
    stores' images by mean-pooled region features (Euclidean). --from-vilbert FILE [STORE ...] OUT: import
    ViLBERT's pickled file, checked against the stores when given."""
    stores_paths, output = list(paths[:-1]), paths[-1]
    if vilbert is not None and not trust_pickle:
        raise MMCoreError(f"refusing to read {vilbert}: it is a pickle, and unpickling runs whatever code the file "
                          "holds. Pass --trust-pickle only if you trust its source; the .npz written is safe to share")
    if vilbert is None and not stores_paths:
        raise MMCoreError("give one or more feature stores and then the output file: STORE [STORE ...] OUT.npz")
    if output.exists() and not overwrite:
        raise MMCoreError(f"{output} already exists; pass --overwrite to replace it")
    if output.suffix != ".npz":
        raise MMCoreError(f"{output}: the hard-negative file is an .npz; name the output OUT.npz")
    stores = [FeatureStore(p, in_memory=False) for p in stores_paths]
    if vilbert is not None:
        _import_vilbert(vilbert, stores, output, top)
        return
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    ids = [img_id for store in stores for img_id in store.ids()]
    if len(set(ids)) != len(ids):
        raise MMCoreError("the stores share image ids; give each image once")
    reporter = Reporter(err_console, quiet=quiet)
    start = time.perf_counter()
    with reporter.bar("mean-pooling", len(ids)) as bar:
        pooled = []
        for store in stores:
            pooled.append(store.mean_pooled())
            store.close()
            bar.advance(len(store))
    feats = np.concatenate(pooled)
    with reporter.bar(f"nearest images ({device})", len(ids)) as bar:
        def advance(rows: int) -> None:
            rate = (bar.done + rows) / max(time.perf_counter() - start, 1e-9)
            bar.advance(rows, info=f"{rate:,.0f} images/s")

        pool = nearest_images_torch(feats, top, device=device, chunk=chunk, memory_mb=memory_mb, progress=advance)
    save_hard_negatives(output, ids, pool)
    click.echo(f"wrote {output}: {len(ids):,} images × {pool.shape[1]} hard negatives "
               f"in {time.perf_counter() - start:.1f}s")
    _echo_hubness(pool)


def _import_vilbert(path: Path, stores: list[FeatureStore], output: Path, top: int) -> None:
    """Convert ViLBERT's pickle (trusted by the caller) to mmcore's .npz, checking ids against ``stores``."""
    ids, pool = read_vilbert_pool(path, allow_pickle=True)
    if stores:
        missing = [i for i in ids if not any(i in store for store in stores)]
        if missing:
            raise MMCoreError(f"{path}: {len(missing)} of {len(ids)} images are in none of the stores "
                              f"{', '.join(str(s.path) for s in stores)}: {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}")
    pool = pool[:, :top]
    save_hard_negatives(output, ids, pool)
    click.echo(f"wrote {output}: {len(ids):,} images × {pool.shape[1]} hard negatives, imported from {path}")
    _echo_hubness(pool)


def _echo_hubness(pool: np.ndarray) -> None:
    """How much the file's hubs let a matching task that draws its mismatches from the lists be learned from the
    image alone (mmcore.data.hubness)."""
    if pool.size == 0:
        return
    uniform = text_blind_loss(pool)
    balanced = text_blind_loss(pool, balancing_weights(pool, len(pool)))
    click.echo(f"text-blind matching loss floor (ln 2 = {math.log(2):.3f}: the image alone says nothing): "
               f"{uniform:.3f} with uniform draws from the lists, {balanced:.3f} with balanced draws "
               f"(1 / how many lists an image is in)")


def _add_dataset_commands() -> None:
    """``mmcore data prepare`` and ``mmcore data check`` live in their own module (mmcore.cli_prepare)."""
    from mmcore.cli_prepare import check_command, prepare_command

    data.add_command(prepare_command)
    data.add_command(check_command)


_add_dataset_commands()
