"""The recipes shipped inside the package (``mmcore/recipes``), found by name from any directory.

A shipped recipe's name is its path under ``mmcore/recipes`` without ``.yaml``: ``msp_tps``,
``base/lxmert_s_cpu``, ``ablations/t_s``. ``mmcore run NAME``, ``mmcore show NAME`` and ``include: [NAME]``
accept such a name wherever a file of that name does not exist (a file always wins).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from click.shell_completion import CompletionItem

from mmcore.errors import did_you_mean

SUFFIX = ".yaml"
DESCRIPTION_WIDTH = 90  # `mmcore recipes` prints one line per recipe


def shipped_dir() -> Path:
    """The directory of the shipped recipes (inside the installed package)."""
    return Path(__file__).resolve().parent / "recipes"


@dataclass(frozen=True)
class ShippedRecipe:
    """One shipped recipe: its ``name``, ``path`` and the first line of its leading comment."""

    name: str
    path: Path
    description: str


def shipped_recipes() -> list[ShippedRecipe]:
    """Every shipped recipe, sorted by name (top-level ones first, then each folder's)."""
    root = shipped_dir()
    paths = sorted(root.rglob(f"*{SUFFIX}"), key=lambda p: (len(p.relative_to(root).parts), str(p)))
    return [ShippedRecipe(_name(p, root), p, _description(p)) for p in paths]


def _name(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _description(path: Path) -> str:
    """The leading comment's first sentence, on one line (a recipe documents itself in its first lines)."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(w for w in words if w)
    end = text.find(". ")
    text = text if end < 0 else text[: end + 1]
    return text if len(text) <= DESCRIPTION_WIDTH else text[: text.rfind(" ", 0, DESCRIPTION_WIDTH)] + " …"


def find_shipped(name: str) -> Path | None:
    """The shipped recipe called ``name`` (with or without ``.yaml``), or None."""
    clean = name.strip().removesuffix(SUFFIX)
    if not clean or clean.startswith(("/", ".")) or "\\" in clean:
        return None
    path = shipped_dir() / f"{clean}{SUFFIX}"
    return path if path.is_file() else None


def suggestion(name: str) -> str:
    """' (did you mean 'x'?)' against the shipped names, and where to see them all."""
    names = [r.name for r in shipped_recipes()]
    return f"{did_you_mean(name.removesuffix(SUFFIX), names)}; `mmcore recipes` lists the shipped recipes"


def complete_recipe(ctx: object, param: object, incomplete: str) -> list[CompletionItem]:
    """Shell completion of a RECIPE argument: the shipped names that start with what was typed, then files."""
    names = [CompletionItem(r.name, help=r.description) for r in shipped_recipes() if r.name.startswith(incomplete)]
    return [*names, CompletionItem(incomplete, type="file")]
