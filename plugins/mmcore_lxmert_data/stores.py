"""Several feature stores read as one (LXMERT keeps COCO train, COCO val and Visual Genome apart)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmcore.api import Example, MMCoreError
from mmcore.data.store import FeatureStore


class StoreUnion:
    """The images of several stores (the first holding an id wins), padded to ``max_regions`` rows.

    Offers what views read from a :class:`FeatureStore`: ``image``, ``labels``, ``in`` and ``path``.
    """

    def __init__(self, stores: Sequence[FeatureStore], max_regions: int) -> None:
        if not stores:
            raise MMCoreError("no feature store given")
        self.stores = list(stores)
        self.max_regions = int(max_regions)
        self.path = " + ".join(str(s.path) for s in self.stores)

    def _store(self, img_id: str) -> FeatureStore:
        for store in self.stores:
            if img_id in store:
                return store
        raise MMCoreError(f"image {img_id!r} is in none of the feature stores {self.path}")

    def __contains__(self, img_id: object) -> bool:
        return any(img_id in s for s in self.stores)

    def image(self, img_id: str) -> Example:
        """The visual fields of one image, regions padded with zeros to ``max_regions``."""
        example = self._store(img_id).image(img_id)
        for key, value in example.items():
            if isinstance(value, np.ndarray) and len(value) < self.max_regions:
                pad = np.zeros((self.max_regions - len(value), *value.shape[1:]), dtype=value.dtype)
                example[key] = np.concatenate([value, pad])
        return example

    def labels(self, img_id: str) -> np.ndarray:
        """The detector object labels of the image's real regions, in region order."""
        return self._store(img_id).labels(img_id)

    def paths(self) -> list[Path]:
        """The store files, in lookup order."""
        return [s.path for s in self.stores]
