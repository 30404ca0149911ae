"""The ``grid`` extractor: a G×G grid of regions described by pixel statistics through a fixed random map.

Each cell gets a 107-number descriptor — mean and standard deviation of R, G, B (6); a joint colour histogram
of 4×4×4 bins, square-rooted (64); a 9-bin unsigned gradient-orientation histogram, magnitude-weighted, on
each quarter of the cell, L2-normalised together (36); the mean gradient magnitude (1) — mapped to
``feature_dim`` by ``relu(descriptor @ W + b)`` with W and b drawn once from ``seed``. No weights, no labels,
no network: the same image always gives the same features, on any machine with the same numpy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from mmcore import MMCoreError
from mmcore.data.extract import Extractor, Regions

COLOUR_BINS = 4
ORIENTATION_BINS = 9
DESCRIPTOR_DIM = 3 + 3 + COLOUR_BINS**3 + 4 * ORIENTATION_BINS + 1
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class GridExtractor(Extractor):
    """G×G grid regions, pixel-statistics descriptors through a fixed seeded random map; no labels."""

    name: ClassVar[str] = "grid"
    defaults: ClassVar[dict[str, Any]] = {
        "grid_size": 6,  # 6×6 = 36 regions, as many as LXMERT's features have
        "feature_dim": 2048,
        "seed": 0,
        "max_side": 448,  # images are block-averaged down to at most this many pixels per side first
    }

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        for key in ("grid_size", "feature_dim", "max_side"):
            if not isinstance(self.options[key], int) or self.options[key] < 1:
                raise MMCoreError(f"extractor 'grid': option {key} must be a positive integer, "
                                  f"got {self.options[key]!r}")
        self.grid = int(self.options["grid_size"])
        self.feature_dim = int(self.options["feature_dim"])
        self.max_boxes = self.grid * self.grid
        rng = np.random.default_rng(int(self.options["seed"]))
        self.projection = rng.standard_normal((DESCRIPTOR_DIM, self.feature_dim)).astype(np.float32)
        self.bias = rng.standard_normal(self.feature_dim).astype(np.float32)
        g = np.arange(self.grid, dtype=np.float32) / self.grid
        x1, y1 = np.meshgrid(g, g)  # row-major: the top row of cells first
        self.boxes = np.stack([x1, y1, x1 + 1 / self.grid, y1 + 1 / self.grid], -1).reshape(-1, 4).astype(np.float32)

    def extract(self, images: Sequence[np.ndarray]) -> list[Regions]:
        """Every image's G×G cells."""
        # One product per image, always of the same shape: an image's features do not depend on its batch.
        return [Regions(np.maximum(self.descriptors(image) @ self.projection + self.bias, 0.0), self.boxes.copy())
                for image in images]

    def vocabularies(self) -> dict[str, list[str]]:
        """One placeholder name each, so the ``lxmert`` dataset can read the store (every confidence is 0)."""
        return {"objects": ["none"], "attributes": ["none"]}

    def descriptors(self, image: np.ndarray) -> np.ndarray:
        """[G*G, 107] cell descriptors of one RGB uint8 image, cells in row-major order."""
        pixels = _downscale(image, int(self.options["max_side"]))
        gray = pixels @ _LUMA
        gy = np.gradient(gray, axis=0) if gray.shape[0] > 1 else np.zeros_like(gray)
        gx = np.gradient(gray, axis=1) if gray.shape[1] > 1 else np.zeros_like(gray)
        magnitude = np.hypot(gx, gy)
        orientation = np.minimum((np.mod(np.arctan2(gy, gx), math.pi) / math.pi * ORIENTATION_BINS).astype(np.int64),
                                 ORIENTATION_BINS - 1)
        rows, cols = _cells(pixels.shape[0], self.grid), _cells(pixels.shape[1], self.grid)
        out = np.empty((self.max_boxes, DESCRIPTOR_DIM), dtype=np.float32)
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                out[i * self.grid + j] = _describe(pixels[r0:r1, c0:c1], magnitude[r0:r1, c0:c1],
                                                   orientation[r0:r1, c0:c1])
        return out


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Float pixels in [0,1], block-averaged by the smallest integer factor that fits ``max_side``."""
    h, w = image.shape[:2]
    k = max(1, -(-max(h, w) // max_side))
    pixels = image.astype(np.float32) / 255.0
    if k > 1:
        pixels = np.pad(pixels, ((0, -h % k), (0, -w % k), (0, 0)), mode="edge")
        # k*k strided slices summed: much faster than a mean over the axes of a 5-d reshape.
        total = np.zeros((pixels.shape[0] // k, pixels.shape[1] // k, 3), dtype=np.float32)
        for dy in range(k):
            for dx in range(k):
                total += pixels[dy::k, dx::k]
        pixels = total / (k * k)
    return pixels


def _cells(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive pixel ranges covering ``size``, each at least one pixel even in a tiny image."""
    edges = [size * i // parts for i in range(parts + 1)]
    out = []
    for a, b in itertools.pairwise(edges):
        start = min(a, size - 1)
        out.append((start, max(b, start + 1)))
    return out


def _describe(pixels: np.ndarray, magnitude: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    flat = pixels.reshape(-1, 3)
    quantised = np.minimum((flat * COLOUR_BINS).astype(np.int64), COLOUR_BINS - 1)
    index = (quantised[:, 0] * COLOUR_BINS + quantised[:, 1]) * COLOUR_BINS + quantised[:, 2]
    colours = np.sqrt(np.bincount(index, minlength=COLOUR_BINS**3) / len(flat))
    gradients = []
    for r0, r1 in _cells(pixels.shape[0], 2):
        for c0, c1 in _cells(pixels.shape[1], 2):
            gradients.append(np.bincount(orientation[r0:r1, c0:c1].ravel(), weights=magnitude[r0:r1, c0:c1].ravel(),
                                         minlength=ORIENTATION_BINS))
    hog = np.concatenate(gradients)
    norm = np.linalg.norm(hog)
    hog = hog / norm if norm > 1e-8 else hog
    return np.concatenate([flat.mean(0), flat.std(0), colours, hog, [magnitude.mean()]]).astype(np.float32)
