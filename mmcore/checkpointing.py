"""Checkpoints: reading them safely, the random-number state of a process, and the two files of a stage or
fine-tuning (``checkpoint.pt`` once it is complete, ``partial.pt`` for the latest step inside it) with the Trainer
callback that writes the latter and the state that resumes from it.

A checkpoint holds tensors and plain values only (read with ``weights_only``), so every state below is stored
as lists, numbers and tensors.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmcore.api import Backbone
from mmcore.callbacks import TrainerCallback
from mmcore.errors import MMCoreError
from mmcore.rundir import RunDir


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents (tensors and plain values only; memory-mapped), or a clear error saying why not."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(2)
    except OSError as exc:
        raise MMCoreError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    is_zip = zipfile.is_zipfile(path)
    # torch.save writes a zip archive (older torch: a pickle, first byte 0x80); anything else is not one.
    if not is_zip and magic[:1] != b"\x80" and magic != b"PK":
        raise MMCoreError(f"checkpoint {path} is not a PyTorch file (expected one written by torch.save)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise MMCoreError(f"checkpoint {path} holds Python objects other than tensors and plain values; "
                              "mmcore does not unpickle those") from None
        raise MMCoreError(f"checkpoint {path} is damaged or truncated ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise MMCoreError(f"checkpoint {path} is damaged or truncated ({_first_line(exc)})") from None
    if not isinstance(ckpt, dict):
        raise MMCoreError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a mapping of weights")
    return ckpt


def read_backbone_weights(path: str | Path) -> dict[str, Tensor]:
    """The backbone state dict of an mmcore checkpoint (its ``backbone``) or of a plain state dict file."""
    ckpt = read_checkpoint(path)
    weights = ckpt.get("backbone", ckpt)
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, Tensor) for v in weights.values()):
        raise MMCoreError(f"checkpoint {path} holds no backbone weights: expected an mmcore checkpoint (with "
                          f"'backbone') or a state dict of tensors; top-level keys: {', '.join(map(str, ckpt)) or '(none)'}")
    return weights


def check_fits(weights: dict[str, Tensor], backbone: Backbone, where: str, path: str) -> None:
    """Raise a short, located error unless ``weights`` load into ``backbone`` exactly (names and shapes)."""
    own = backbone.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if shapes:
        name, theirs, ours = shapes[0]
        problems.append(f"{len(shapes)} tensor(s) differ in shape, e.g. {name} is {list(theirs)} in the checkpoint "
                        f"but {list(ours)} in this recipe's backbone")
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    raise MMCoreError(f"{where}: checkpoint {path} does not fit the recipe's backbone: {'; '.join(problems)}. Was it "
                      "saved with other backbone options (hidden_size, intermediate_size, x_layers, ...) or for a "
                      "dataset with another vocabulary or feature size?")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def cpu_state(module: nn.Module) -> dict[str, Tensor]:
    """A module's state dict on the CPU, detached."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


# ----- random-number state ----------------------------------------------------------------------------------------
def pack_random(state: tuple) -> dict[str, Any]:
    """``random.Random.getstate()`` as plain values."""
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def unpack_random(packed: Mapping[str, Any]) -> tuple:
    """The inverse of :func:`pack_random`."""
    return packed["version"], tuple(int(v) for v in packed["internal"]), packed["gauss"]


def capture_rng(collate: Any, generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """This process's random state: Python, NumPy, torch (CPU and every initialised CUDA device), the collate
    function's own ``rng`` and the named generators."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    collate_rng = getattr(collate, "rng", None)
    return {
        "python": pack_random(random.getstate()),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "collate": pack_random(collate_rng.getstate()) if isinstance(collate_rng, random.Random) else None,
        "generators": {name: gen.get_state() for name, gen in generators.items()},
    }


def restore_rng(state: Mapping[str, Any], collate: Any, generators: Mapping[str, torch.Generator],
                with_collate: bool = True) -> None:
    """Put back what :func:`capture_rng` took (the collate function's ``rng`` only when ``with_collate``)."""
    random.setstate(unpack_random(state["python"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["key"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if with_collate and state["collate"] is not None and isinstance(getattr(collate, "rng", None), random.Random):
        collate.rng.setstate(unpack_random(state["collate"]))
    for name, gen in generators.items():
        if name in state["generators"]:
            gen.set_state(state["generators"][name])


# ----- the checkpoint files of one stage or fine-tuning -----------------------------------------------------------
class CheckpointFiles:
    """``checkpoint.pt`` (the stage or fine-tuning is trained) and ``partial.pt`` (its latest in-progress step).

    Only rank 0 writes; every process reads. Each write is atomic, so a kill leaves the previous file intact.
    """

    def __init__(self, run: RunDir, final: Path, scope: str, what: str) -> None:
        self.run, self.final, self.scope, self.what = run, final, scope, what
        self.partial = run.partial_checkpoint(final)

    def read(self, path: Path) -> dict[str, Any]:
        """A checkpoint of this scope, or an error saying how to start over."""
        try:
            return read_checkpoint(path)
        except MMCoreError as exc:
            again = f"train {self.what} again" if path == self.final else f"restart {self.what} from its beginning"
            raise MMCoreError(f"{exc}; delete it to {again}") from None

    def begin(self) -> dict[str, Any] | None:
        """The partial checkpoint to continue from (None: start afresh). ``metrics.jsonl`` loses this scope's
        records past that step: they were logged after it by a process that was stopped."""
        partial = self.read(self.partial) if self.partial.exists() else None
        if self.run.main:
            self.run.drop_metrics(self.scope, after_step=int(partial["step"]) if partial else 0)
        return partial

    def save_partial(self, record: dict[str, Any]) -> None:
        """Replace ``partial.pt`` (rank 0)."""
        self.run.save_checkpoint(self.partial, record)

    def save_final(self, record: dict[str, Any]) -> None:
        """Write ``checkpoint.pt``, then drop ``partial.pt`` (rank 0)."""
        self.run.save_checkpoint(self.final, record)
        self.discard_partial()

    def discard_partial(self) -> None:
        """Remove a leftover ``partial.pt`` (its scope is complete)."""
        if self.run.main:
            self.partial.unlink(missing_ok=True)


class PartialCheckpoints(TrainerCallback):
    """Writes ``partial.pt`` at the Trainer's checkpoint steps: ``saved()`` (the weights and whatever else the stage
    or fine-tuning keeps) with the training state (rank 0; the others would copy their weights only to drop them)."""

    def __init__(self, files: CheckpointFiles, saved: Callable[[], dict[str, Any]]) -> None:
        self.files, self.saved = files, saved

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        if self.files.run.main:
            self.files.save_partial({**self.saved(), "step": state["step"], "training": state})


def resume_state(files: CheckpointFiles, partial: dict[str, Any] | None) -> dict[str, Any] | None:
    """The training state to continue from ``partial`` (None: start afresh), naming its file for error messages."""
    return None if partial is None else {**partial["training"], "path": str(files.partial)}
