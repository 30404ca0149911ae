"""How much of the phrase view the phrase-stage MLM draws from: the share of its content WordPieces that are
marked as attribute or category words (``focus_tokens``), and the descriptions with none marked (those are
masked uniformly). Reads the dataset of a recipe (default: synthworld as msp_tps.yaml configures it).

    python benchmarks/measure_phrase_focus.py [--recipe recipes/msp_tps.yaml] [--max-text-len 40] [--cache-dir DIR]
"""

from __future__ import annotations

from pathlib import Path

import click
import torch

from mmcore.api import FOCUS_TOKENS
from mmcore.data.collate import Collator
from mmcore.context import default_cache_dir
from mmcore.plugins import load_plugins
from mmcore.recipe import load_recipe
from mmcore.validate import resolve

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "msp_tps.yaml"


@click.command()
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=RECIPE)
@click.option("--max-text-len", type=int, default=40, show_default=True, help="the phrase stage's max_text_len")
@click.option("--split", default="train", show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None)
def main(recipe: Path, max_text_len: int, split: str, cache_dir: Path | None) -> None:
    """Print the share of marked content WordPieces in the recipe's phrase view."""
    registry = load_plugins().registry
    resolved = resolve(load_recipe(recipe), registry)
    name, options = next(iter(resolved["datasets"].items()))
    dataset = registry.get("dataset", name).factory(options, cache_dir or default_cache_dir())
    dataset.prepare()
    view, tokenizer = dataset.view("phrase", split), dataset.tokenizer()
    collate, specials = Collator(tokenizer, max_text_len), torch.tensor(sorted(set(tokenizer.all_special_ids)))
    marked = content = unmarked_rows = 0
    for start in range(0, len(view), 512):
        batch = collate([view[i] for i in range(start, min(start + 512, len(view)))])
        real = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], specials)
        focus = batch[FOCUS_TOKENS] & real
        marked, content = marked + int(focus.sum()), content + int(real.sum())
        unmarked_rows += int((~focus.any(dim=1)).sum())
    click.echo(f"{name} phrase/{split}: {len(view):,} descriptions, {marked:,} of {content:,} content WordPieces "
               f"marked ({marked / max(content, 1):.1%}), {unmarked_rows:,} descriptions with none marked "
               f"(max_text_len {max_text_len})")


if __name__ == "__main__":
    main()
