"""Find and decode raw images (JPEG, PNG) for feature extraction: Pillow if installed, else torchvision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmcore.errors import DataError, MMCoreError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
Decoder = Callable[[Path], np.ndarray]


class ImageReadError(DataError):
    """An image file that cannot be decoded; ``path`` names it."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: cannot read the image ({reason})")


def list_images(folder: Path) -> list[tuple[str, Path]]:
    """(img_id = file stem, path) of every JPEG/PNG directly in ``folder``, sorted by file name."""
    if not folder.is_dir():
        raise MMCoreError(f"{folder} is not a directory of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MMCoreError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)} files)")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise DataError(f"{seen[path.stem]} and {path} have the same image id {path.stem!r} (the file name "
                            "without its extension); keep one of them")
        seen[path.stem] = path
    return list(seen.items())


def image_decoder() -> tuple[str, Decoder]:
    """(library name, decode(path) -> RGB uint8 [H,W,3]); a clear error when neither library is installed."""
    try:
        from PIL import Image  # noqa: F401
    except ImportError:
        pass
    else:
        return "pillow", _decode_pillow
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        pass
    else:
        return "torchvision", _decode_torchvision
    raise MMCoreError("reading images needs Pillow, which is not installed: pip install \"mmcore-vlp[images]\" "
                      "(or pip install pillow; torchvision works too)")


def _decode_pillow(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            # Phone JPEGs store their rotation in EXIF; boxes must match the image as it is viewed.
            upright = ImageOps.exif_transpose(image)
            rgb = upright.convert("RGB")
            array = np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds (UnidentifiedImageError, OSError, ...)
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from None
    return _checked(path, array)


def _decode_torchvision(path: Path) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        tensor = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except Exception as exc:  # noqa: BLE001 - the C++ decoders raise RuntimeError and others
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from None
    return _checked(path, tensor.permute(1, 2, 0).contiguous().numpy())


def _checked(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise ImageReadError(path, f"decoded to shape {array.shape}, not an RGB image")
    return array
