"""A run directory: resolved recipe, per-stage checkpoints, ``metrics.jsonl``, ``results.json``, ``summary.md``.

Every file is written to a temporary name in the same directory and renamed, so a kill never leaves a
half-written checkpoint or result behind. With several training processes only rank 0 writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcore.errors import MMCoreError

if TYPE_CHECKING:
    import torch

# A full disk or an exceeded quota: the user's to fix, so a clear message rather than a traceback.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write ``path`` via ``write(file)`` into a temp file in the same directory, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise MMCoreError(f"no space left on the device while writing {path}; the previous version of that file "
                              "(if any) is intact. Free some space, then continue with --resume RUN_DIR") from None
        raise


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable (a power cut after it cannot bring back the old file); not on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    atomic_write(path, lambda f: f.write(text))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    import torch  # here, so that commands that only read run directories start without torch

    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's exact values (names, shapes, bytes), to prove which weights a stage began from."""
    import torch

    digest = hashlib.sha1()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


class RunDir:
    """Paths and writers of one run directory; the writers write only on rank 0 (``main``)."""

    def __init__(self, path: Path) -> None:
        from mmcore import distributed

        self.path = path
        self.main = distributed.current().is_main

    @classmethod
    def create(cls, output_dir: Path, name: str, run_name: str | None = None, overwrite: bool = False) -> RunDir:
        """A fresh run directory ``output_dir/name/<run_name or timestamp>`` (made by rank 0, its path shared)."""
        from mmcore import distributed

        dist = distributed.setup()
        return cls(dist.on_main(lambda: cls._make(output_dir, name, run_name, overwrite)))

    @classmethod
    def start(cls, output_dir: Path, name: str, run_name: str | None, overwrite: bool, recipe: str) -> RunDir:
        """A fresh run directory (:meth:`create`) holding its resolved recipe ``recipe`` (YAML text)."""
        run = cls.create(output_dir, name, run_name, overwrite)
        if run.main:
            atomic_write_text(run.path / "recipe.resolved.yaml", recipe)
        return run

    @staticmethod
    def _make(output_dir: Path, name: str, run_name: str | None, overwrite: bool) -> Path:
        stamp = run_name or time.strftime("%Y%m%d-%H%M%S")
        path = output_dir / name / stamp
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise MMCoreError(f"run directory {path} already exists; use --resume {path} to continue it "
                              f"or --overwrite to start again")
        if path.exists() and overwrite:
            for child in ("results.json", "metrics.jsonl", "summary.md"):
                (path / child).unlink(missing_ok=True)
            for ckpt in [*path.glob("*/*/checkpoint.pt"), *path.glob("*/*/partial.pt")]:
                ckpt.unlink()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory (for ``--resume``)."""
        if not (path / "recipe.resolved.yaml").is_file():
            raise MMCoreError(f"{path} is not a run directory (no recipe.resolved.yaml)")
        return cls(path)

    def stage_checkpoint(self, stage: str) -> Path:
        """Where a pre-training stage's checkpoint lives."""
        return self.path / "stages" / stage / "checkpoint.pt"

    def finetune_checkpoint(self, name: str) -> Path:
        """Where a fine-tuned model's checkpoint lives."""
        return self.path / "finetune" / name / "checkpoint.pt"

    @staticmethod
    def partial_checkpoint(final: Path) -> Path:
        """Where the latest in-progress checkpoint of the stage or fine-tuning whose final one is ``final`` lives."""
        return final.with_name("partial.pt")

    def save_checkpoint(self, path: Path, obj: Any) -> None:
        """Atomically write a checkpoint (rank 0)."""
        if self.main:
            atomic_torch_save(path, obj)

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl``: the core's JSONL logger's write (:mod:`mmcore.loggers`), opened
        per record because a resume may replace the file (:meth:`drop_metrics`); a torn last line is skipped by
        :meth:`read_metrics`."""
        if not self.main:
            return
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record of ``metrics.jsonl``."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def drop_metrics(self, scope: str, after_step: int) -> None:
        """Remove ``scope``'s records past ``after_step`` (and a torn last line) from ``metrics.jsonl``, atomically."""
        path = self.path / "metrics.jsonl"
        if not self.main or not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        records = self.read_metrics()
        keep = [r for r in records if r.get("scope") != scope or int(r.get("step", 0)) <= after_step]
        if len(keep) != len(lines):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def read_results(self) -> dict[str, Any]:
        """``results.json`` as a dict (empty if absent)."""
        path = self.path / "results.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def write_results(self, results: dict[str, Any]) -> None:
        """Atomically replace ``results.json`` (rank 0)."""
        if self.main:
            atomic_write_text(self.path / "results.json", json.dumps(results, indent=2, sort_keys=False) + "\n")
