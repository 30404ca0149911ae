"""Registers the ``lxmert_s`` backbone."""

from __future__ import annotations

from typing import Any

import mmcore
from mmcore.api import DataInfo
from mmcore.errors import MMCoreError, did_you_mean
from mmcore.registry import Registry

from mmcore_lxmert.model import DATA_FIELDS, LxmertS, LxmertSConfig

LXMERT_S_DEFAULTS: dict[str, Any] = LxmertSConfig.option_defaults()


def build_lxmert_s(config: dict[str, Any], info: DataInfo) -> LxmertS:
    """LXMERT-S (x=5, l=r=0, visual [CLS], product pooler, whole-word positions); sizes from ``info``."""
    for key in config:
        if key in DATA_FIELDS:
            raise MMCoreError(f"backbone lxmert_s: option {key!r} is not settable; it comes from the dataset")
        if key not in LXMERT_S_DEFAULTS:
            raise MMCoreError(f"backbone lxmert_s: unknown option {key!r}{did_you_mean(key, LXMERT_S_DEFAULTS)}; "
                              f"options: {', '.join(LXMERT_S_DEFAULTS)}")
    options = {**LXMERT_S_DEFAULTS, **config}
    return LxmertS(LxmertSConfig(vocab_size=info.vocab_size, visual_feat_dim=info.feature_dim, **options))


@mmcore.hookimpl
def mmcore_register_backbones(registry: Registry) -> None:
    """Add ``lxmert_s``."""
    registry.add_backbone("lxmert_s", build_lxmert_s, defaults=LXMERT_S_DEFAULTS)
