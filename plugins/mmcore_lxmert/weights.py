"""Weights in and out of the lxmert backbones.

In (:func:`load_weights`): a transformers ``LxmertModel``/``LxmertForPreTraining`` directory written by
``save_pretrained`` (``model.safetensors`` or ``pytorch_model.bin``, sharded or not), a plain state-dict file
(``.safetensors`` or a torch file), an mmcore checkpoint (its ``backbone`` entry), or an original LXMERT checkpoint
(keys prefixed ``bert.``, often behind ``module.``). Torch files are read with ``weights_only=True``, so a file
that would run code when unpickled is refused. Keys are matched by name after removing ``module.`` and the
``lxmert.``/``bert.`` prefix; what the file has and the backbone lacks (task heads, or the language and
relationship layers of a full LXMERT loaded into ``lxmert_s``) is reported as unexpected, never an error, and what
the backbone has and the file lacks (LXMERT-S's visual [CLS] and second pooler) keeps its initialisation and is
reported as missing.

Out (:func:`export_transformers`): ``config.json`` + ``model.safetensors`` that ``transformers.LxmertModel``
loads with ``from_pretrained``. LXMERT-S's extras have no place there and are left out; its outputs equal
mmcore's only with ``visual_cls``, ``product_pooler`` and ``whole_word_positions`` off. :func:`export_pretrained`
adds the side file ``mmcore_extras.safetensors`` (the extras' tensors) and ``mmcore_backbone.json`` (the options
transformers has no field for); :func:`read_state_dict` of such a directory reads the extras too, so a backbone
built with those options and ``weights: <the directory>`` is the exported one exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore import MMCoreError
from mmcore.data.fileio import atomic_path, write_json
from mmcore_lxmert.layers import LAYER_NORM_EPS
from mmcore_lxmert.model import Lxmert

# Files save_pretrained writes, in the order transformers itself prefers them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Parameters transformers' LxmertModel has no place for, and the side files an export keeps them (and the options
# that use them) in.
LXMERT_S_EXTRAS = ("visual_cls_embedding", "visn_pooler.")
EXTRAS_FILE = "mmcore_extras.safetensors"
OPTIONS_FILE = "mmcore_backbone.json"
# Early BERT ports named LayerNorm parameters gamma/beta.
_OLD_NORM_NAMES = {".gamma": ".weight", ".beta": ".bias"}


@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys ``loaded``, backbone keys ``missing`` from the file, file keys
    ``unexpected`` by the backbone (names after prefix removal)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line per group, with keys grouped by module (``encoder.layer.* (48)``)."""
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.missing:
            lines.append(f"  missing (kept at initialisation): {group_keys(self.missing)}")
        if self.unexpected:
            lines.append(f"  unused: {group_keys(self.unexpected)}")
        return "\n".join(lines)


def group_keys(keys: list[str]) -> str:
    """``encoder.layer.* (32), cls.* (5)``: keys grouped by their first one or two name parts."""
    groups: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        depth = 2 if parts[0] == "encoder" and len(parts) > 2 else 1
        name = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        groups[name] = groups.get(name, 0) + 1
    return ", ".join(f"{name} ({n})" if n > 1 else name for name, n in groups.items())


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Every tensor in a weights file or ``save_pretrained`` directory, by its name in the file."""
    path = Path(path)
    if not path.exists():
        raise MMCoreError(f"weights not found: {path}")
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise MMCoreError(f"weights directory {path} has none of {', '.join(WEIGHT_FILES)}")
        extras = _read_file(path / EXTRAS_FILE) if (path / EXTRAS_FILE).is_file() else {}
        path = found[0]
        return {**(_read_sharded(path) if path.name.endswith(".index.json") else _read_file(path)), **extras}
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    return _read_file(path)


def _read_sharded(index: Path) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MMCoreError(f"cannot read shard index {index}: {exc}") from None
    state: dict[str, Tensor] = {}
    for shard in shards:
        state.update(_read_file(index.parent / shard))
    return state


def _read_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise MMCoreError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MMCoreError(f"cannot read weights file {path} (truncated, corrupt, or not tensors only): "
                          f"{first}") from None
    # An mmcore run checkpoint keeps the backbone beside task heads and bookkeeping.
    if isinstance(obj, Mapping) and isinstance(obj.get("backbone"), Mapping):
        obj = obj["backbone"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise MMCoreError(f"weights file {path} is not a state dict (a mapping of names to tensors)")
    return dict(obj)


def backbone_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename keys to the backbone's: drop ``module.`` and ``lxmert.``/``bert.``; old ``gamma``/``beta`` norms."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        for prefix in ("lxmert.", "bert."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        for old, new in _OLD_NORM_NAMES.items():
            if key.endswith(old) and ("LayerNorm" in key or "layer_norm" in key):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def load_weights(model: Lxmert, source: str | os.PathLike[str] | Mapping[str, Tensor]) -> LoadReport:
    """Load matching tensors into ``model`` in place; a shape mismatch is an error naming the key and both shapes."""
    name = "<state dict>" if isinstance(source, Mapping) else str(source)
    state = backbone_keys(source if isinstance(source, Mapping) else read_state_dict(source))
    own = model.state_dict()
    report = LoadReport(source=name)
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif value.shape != own[key].shape:
            raise MMCoreError(f"weights {name}: {key!r} has shape {tuple(value.shape)} in the file but "
                              f"{tuple(own[key].shape)} in the backbone (check hidden_size, the layer counts, and "
                              "the dataset's vocabulary and feature sizes)")
        else:
            report.loaded.append(key)
    report.missing = [key for key in own if key not in state]
    if not report.loaded:
        raise MMCoreError(f"weights {name}: none of its {len(state)} tensors matches a backbone parameter "
                          f"(it has {group_keys(list(state)) or 'nothing'})")
    if not any(p.is_meta for p in model.parameters()):  # a meta-device model (shapes only) has nothing to fill
        model.load_state_dict({key: state[key] for key in report.loaded}, strict=False)
    return report


@dataclass
class ExportReport:
    """What :func:`export_transformers` wrote: the directory, parameters ``skipped`` (no place in transformers) and
    ``differences`` (options whose behaviour transformers' LxmertModel does not reproduce)."""

    directory: Path
    exported: list[str]
    skipped: list[str]
    differences: list[str]


def transformers_config(model: Lxmert) -> dict[str, Any]:
    """The ``config.json`` of an equivalent ``transformers.LxmertModel`` (its remaining fields keep defaults)."""
    c = model.config
    return {
        "architectures": ["LxmertModel"], "model_type": "lxmert", "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "num_attention_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size, "hidden_act": "gelu", "l_layers": c.l_layers,
        "x_layers": c.x_layers, "r_layers": c.r_layers, "hidden_dropout_prob": c.hidden_dropout,
        "attention_probs_dropout_prob": c.attention_dropout, "max_position_embeddings": c.max_position_embeddings,
        "type_vocab_size": c.type_vocab_size, "initializer_range": c.initializer_range,
        "visual_feat_dim": c.visual_feat_dim, "visual_pos_dim": c.visual_pos_dim,
        "dtype": str(model.pooler.dense.weight.dtype).removeprefix("torch."),
    }


def export_transformers(model: Lxmert, directory: str | os.PathLike[str]) -> ExportReport:
    """Write ``config.json`` and ``model.safetensors`` (each atomically) for ``LxmertModel.from_pretrained``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise MMCoreError(f"export target {directory} exists and is not a directory")
    state = model.state_dict()
    skipped = [k for k in state if k.startswith(LXMERT_S_EXTRAS)]
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if k not in skipped}
    c = model.config
    differences = [f"{name} (transformers has no such option)" for name in
                   ("visual_cls", "product_pooler", "whole_word_positions") if getattr(c, name)]
    if c.layer_norm_eps != LAYER_NORM_EPS:
        differences.append(f"layer_norm_eps {c.layer_norm_eps} (transformers' LXMERT fixes it at {LAYER_NORM_EPS})")
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(directory / "config.json", transformers_config(model))
    return ExportReport(directory, list(tensors), skipped, differences)



def export_pretrained(model: Lxmert, directory: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """:func:`export_transformers`, plus LXMERT-S's extras in ``mmcore_extras.safetensors`` and the backbone's name
    and options in ``mmcore_backbone.json``: what mmcore needs to rebuild backbone ``name`` with nothing lost."""
    from safetensors.torch import save_file

    directory = Path(directory)
    report = export_transformers(model, directory)
    state = model.state_dict()
    files = ["config.json", "model.safetensors"]
    if report.skipped:
        with atomic_path(directory / EXTRAS_FILE) as tmp:
            save_file({k: state[k].detach().to("cpu").contiguous() for k in report.skipped}, str(tmp),
                      metadata={"format": "pt"})
        files.append(EXTRAS_FILE)
    c = model.config
    options = {key: getattr(c, key) for key in ("l_layers", "x_layers", "r_layers", "hidden_size", "num_attention_heads",
                                                 "intermediate_size", "visual_cls", "product_pooler",
                                                 "whole_word_positions", "layer_norm_eps")}
    write_json(directory / OPTIONS_FILE, {"backbone": name, "options": options, "extras": report.skipped,
                                          "differences": report.differences})
    return {"files": [*files, OPTIONS_FILE], "backbone": name, "options": options, "extras": report.skipped,
            "differences": report.differences}
