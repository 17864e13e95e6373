"""Decoding one image file into an RGB PIL image, whatever its mode, or saying why not.

Every reader of the package goes through :func:`decode_image`, so that corrupt, truncated or
non-image files fail the same way (:class:`BadImageError`, naming the file) and odd modes
(grayscale, CMYK, palette, RGBA, 16-bit) all come out as 8-bit RGB.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..errors import ResnetsError

# The extensions torchvision's ImageFolder accepts; matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImageError(ResnetsError):
    """A file that should hold an image cannot be decoded (corrupt, truncated, not an image)."""


class BadImageWarning(UserWarning):
    """An unreadable image was skipped; the message names the file."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: bytes, name: str) -> Image.Image:
    """Fully decode ``data`` (the bytes of file ``name``) to an RGB image.

    Decoding is complete (not lazy), so a truncated file fails here rather than later inside
    a transform. Any decoder failure becomes :class:`BadImageError`.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image)
    except Exception as error:  # any decoder error means the file is unusable  # noqa: BLE001
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadImageError(f"cannot decode image {name}: {reason}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode.

    Alpha is dropped (as torchvision's ``ImageFolder`` loader does, so pixels match it);
    16-bit and 32-bit integer images are scaled to 8 bits instead of being clipped at 255,
    which is what a plain ``convert("RGB")`` would do to them.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":  # float images are taken as 0..1
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    values = array.astype(np.int64)
    if mode.startswith("I;16") or values.max(initial=0) > 255:
        values = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
    return np.clip(values, 0, 255).astype(np.uint8)
