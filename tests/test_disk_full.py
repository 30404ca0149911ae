"""Running out of disk while writing a checkpoint leaves the previous checkpoint intact, and says so clearly."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.errors import MMCoreError
from mmcore.rundir import atomic_torch_save


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save(path, {"w": torch.ones(3)})
    before = path.read_bytes()

    def full_disk(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(b"half a checkpoint")  # some bytes land before the device fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(MMCoreError, match=r"no space left on the device while writing .*checkpoint\.pt.*--resume"):
        atomic_torch_save(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def test_other_write_errors_propagate_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_torch_save(tmp_path / "checkpoint.pt", {})
    assert list(tmp_path.iterdir()) == []
