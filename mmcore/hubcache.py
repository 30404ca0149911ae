"""Hugging Face Hub ids for local files: a tokenizer or weights named ``bert-base-uncased`` or ``org/model`` are read
from the local Hugging Face cache when no file of that name exists. Offline only: nothing is ever downloaded."""

from __future__ import annotations

import os
import re
from pathlib import Path

# "name" or "org/name" as the Hub spells repository ids (no path separators beyond the one slash, no "..").
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def hub_cache_dir() -> Path | None:
    """The hub cache the environment names now (``HF_HUB_CACHE``, else ``HF_HOME/hub``), or None for the default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return None


def local_path(name: str | os.PathLike[str]) -> Path:
    """``name`` as a path when it exists; else, when it is a Hub id cached locally, that snapshot's folder; else
    ``name`` as a path (the caller reports it missing)."""
    path = Path(name).expanduser()
    if path.exists() or not _REPO_ID.match(str(name)) or str(name).endswith((".pt", ".pth", ".bin", ".safetensors")):
        return path
    snapshot = cached_snapshot(str(name))
    return snapshot if snapshot is not None else path


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of model ``repo_id`` (its ``main`` revision), or None when it is not cached."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    cache = hub_cache_dir()
    try:
        folder = snapshot_download(repo_id, local_files_only=True, cache_dir=str(cache) if cache else None)
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError) or an unusable id: not a Hub model here
        return None
    return Path(folder)


def not_found_hint(name: str | os.PathLike[str]) -> str:
    """What to say when ``name`` is neither a file nor a cached Hub model."""
    if not _REPO_ID.match(str(name)):
        return ""
    where = hub_cache_dir() or "the default Hugging Face cache"
    return (f"; nor is {str(name)!r} a model in the local Hugging Face cache ({where}); mmcore never downloads: "
            f"fetch it first (huggingface-cli download {name}) or give a local directory")
