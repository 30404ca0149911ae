"""Registers the ``lxmert`` (l=9, x=5, r=5) and ``lxmert_s`` (x=5 only) backbones: one model, two presets."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mmcore
from mmcore import Registry
from mmcore.api import DataInfo, MMCoreError, did_you_mean, local_path, not_found_hint
from mmcore_lxmert.model import DATA_FIELDS, Lxmert, LxmertConfig
from mmcore_lxmert.weights import export_pretrained, load_weights

# `weights` is read by the factory, not by the model: a file or save_pretrained directory to load after building
# (relative paths are relative to the working directory).
LXMERT_S_DEFAULTS: dict[str, Any] = {**LxmertConfig.option_defaults(), "weights": None}
LXMERT_DEFAULTS: dict[str, Any] = {
    **LXMERT_S_DEFAULTS, "l_layers": 9, "x_layers": 5, "r_layers": 5,
    "visual_cls": False, "product_pooler": False, "whole_word_positions": False,
}

LXMERT_TYPES: dict[str, Any] = {"weights": str | None}

_reported: set[tuple[str, str]] = set()


def _build(name: str, defaults: dict[str, Any], config: dict[str, Any], info: DataInfo) -> Lxmert:
    for key in config:
        if key in DATA_FIELDS:
            raise MMCoreError(f"backbone {name}: option {key!r} is not settable; it comes from the dataset")
        if key not in defaults:
            raise MMCoreError(f"backbone {name}: unknown option {key!r}{did_you_mean(key, defaults)}; "
                              f"options: {', '.join(defaults)}")
    options = {**defaults, **config}
    weights = options.pop("weights")
    # A Hub id (org/model) names its snapshot in the local Hugging Face cache; nothing is downloaded.
    path = None if weights is None else local_path(str(weights))
    if path is not None and not path.exists():
        raise MMCoreError(f"backbone {name}: weights not found: {weights} (looked for {path.resolve()})"
                          f"{not_found_hint(str(weights))}")
    model = Lxmert(LxmertConfig(vocab_size=info.vocab_size, visual_feat_dim=info.feature_dim, **options))
    if path is not None:
        report = load_weights(model, path)
        # The engine builds a backbone per stage and per fine-tuning; say what was loaded once.
        if (name, str(path)) not in _reported:
            _reported.add((name, str(path)))
            print(f"backbone {name}: {report.summary()}", file=sys.stderr)
    return model


def _factory(name: str, defaults: dict[str, Any], doc: str) -> Callable[[dict[str, Any], DataInfo], Lxmert]:
    def factory(config: dict[str, Any], info: DataInfo) -> Lxmert:
        return _build(name, defaults, config, info)

    factory.__doc__ = doc
    return factory


build_lxmert_s = _factory("lxmert_s", LXMERT_S_DEFAULTS,
                          "LXMERT-S (x=5, l=r=0, visual [CLS], product pooler, whole-word positions); sizes from info.")
build_lxmert = _factory("lxmert", LXMERT_DEFAULTS,
                        "LXMERT (l=9 language, r=5 relationship, x=5 cross-modality layers); sizes from info.")


@mmcore.hookimpl
def mmcore_register_backbones(registry: Registry) -> None:
    """Add ``lxmert`` and ``lxmert_s``."""
    registry.add_backbone("lxmert", build_lxmert, defaults=LXMERT_DEFAULTS, types=LXMERT_TYPES)
    registry.add_backbone("lxmert_s", build_lxmert_s, defaults=LXMERT_S_DEFAULTS, types=LXMERT_TYPES)


@mmcore.hookimpl
def mmcore_export_backbone(name: str, backbone: Any, directory: Path) -> dict[str, Any] | None:
    """Export ``lxmert``/``lxmert_s`` for ``transformers.LxmertModel`` (extras in a side file); others: None."""
    if name not in ("lxmert", "lxmert_s") or not isinstance(backbone, Lxmert):
        return None
    return export_pretrained(backbone, directory, name)
