"""Reading one image file and decoding it into an RGB PIL image, whatever its mode, or saying why not.

Every reader of the package goes through :func:`decode_image`, so that corrupt, truncated or
non-image files fail the same way (:class:`BadImageError`, naming the file; an image over the decode
budget, :func:`resnets.preprocessing.check_pixels`, is refused from its header) and odd modes
(grayscale, CMYK, palette, RGBA, 16-bit) all come out as 8-bit RGB. Files on disk are read
with :func:`read_image_file`, which opens regular files only (never a device, FIFO or socket,
which could block or never end) and refuses files over :data:`MAX_IMAGE_BYTES`.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..errors import ResnetsError, first_line
from ..fileio import open_regular
from ..preprocessing import PixelBudgetError, check_pixels
from ..terminal import printable  # noqa: F401 - the one escaping of names, used by the readers

# The extensions torchvision's ImageFolder accepts; matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# The largest image file (or archive member) read; larger ones are skipped as unreadable. A
# 50-megapixel camera JPEG is about 25 MiB.
MAX_IMAGE_BYTES = 64 * 2**20


class BadImageError(ResnetsError):
    """A file that should hold an image cannot be decoded (corrupt, truncated, not an image)."""


class OversizedImageError(BadImageError, PixelBudgetError):
    """An image file declaring more pixels than the decode budget: unreadable, and over the budget."""


class BadImageWarning(UserWarning):
    """An unreadable image was skipped; the message names the file."""


class SkippedImages:
    """The unreadable images one pass over a data set skips, said alike by every reader: a
    :class:`BadImageWarning` naming each, and one with their count (:meth:`warn_count`). Readers
    decoding in threads :meth:`add` from the calling thread: in item order, pointing at its caller."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str, stacklevel: int = 3) -> None:
        self.names.append(name)
        warnings.warn(f"skipped unreadable image {name}", BadImageWarning, stacklevel=stacklevel)

    def item(self, dataset: Any, index: int) -> tuple[Any, Any] | None:
        """``dataset[index]`` (of an :class:`~.dataset.ImageDataset`), or None if unreadable."""
        try:
            return dataset[index]
        except BadImageError:
            self.add(dataset.describe(index), stacklevel=4)
            return None

    def warn_count(self, where: str, total: int | None = None) -> None:
        if self.names:
            of = "" if total is None else f" of {total}"
            warnings.warn(f"skipped {len(self.names)} unreadable image(s){of} in {where}", BadImageWarning,
                          stacklevel=3)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_image_file(path: str | os.PathLike, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of the image file at ``path``; BadImageError unless it is a regular file (see
    :func:`resnets.fileio.open_regular`: a FIFO, device or folder is refused) of at most ``limit``
    bytes, checked before any is read."""
    name = printable(os.fspath(path))
    try:
        handle = open_regular(path)
    except OSError as error:
        raise BadImageError(f"cannot read image {name}: {error.strerror or error}") from None
    except ResnetsError:
        raise BadImageError(f"cannot read image {name}: not a regular file") from None
    with handle:
        info = os.fstat(handle.fileno())
        if info.st_size > limit:
            raise BadImageError(f"cannot read image {name}: {info.st_size} bytes, more than the "
                                f"{limit} an image file may have")
        try:
            data = handle.read(limit + 1)
        except OSError as error:
            raise BadImageError(f"cannot read image {name}: {error.strerror or error}") from None
    if len(data) > limit:  # grew since fstat
        raise BadImageError(f"cannot read image {name}: more than the {limit} bytes an image file may have")
    return data


def decode_image(data: bytes, name: str, fits: Callable[[int, int], object] | None = None) -> Image.Image:
    """Fully decode ``data`` (the bytes of file ``name``) to an RGB image: not lazily, so that a
    truncated file fails here, as :class:`BadImageError` (:class:`OversizedImageError` over the
    decode budget), rather than later inside a transform.

    ``fits(width, height)``, called with the header's size before any pixel is decoded, checks
    what comes next (a model's resize: ``Preprocessing.resized_size``), so an image whose resize
    would be over the budget is refused before its decode is paid for."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_pixels(*image.size)
            if fits is not None:
                fits(*image.size)
            image.load()
            return to_rgb(image)
    except PixelBudgetError as error:
        raise OversizedImageError(f"cannot decode image {name}: {error}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # the server makes it an error
        raise OversizedImageError(f"cannot decode image {name}: {first_line(error)}") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(f"cannot decode image {name}: not an image format PIL can read") from None
    except Exception as error:  # any decoder error means the file is unusable  # noqa: BLE001
        raise BadImageError(f"cannot decode image {name}: {first_line(error)}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: alpha dropped (as torchvision's ``ImageFolder`` loader does),
    16- and 32-bit integer images scaled to 8 bits, where ``convert("RGB")`` would clip them."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """8 bits from a float or integer image, with one temporary the size of the image at most:
    a 16-bit image at the decode budget would otherwise take gigabytes of int64 intermediates."""
    if mode == "F":  # float images are taken as 0..1
        values = np.clip(array, 0.0, 1.0, dtype=np.float32)
        values *= 255.0
        values += 0.5
        return values.astype(np.uint8)
    if mode.startswith("I;16") or int(array.max(initial=0)) > 255:
        sixteen = array if array.dtype == np.uint16 else np.clip(array, 0, 65535).astype(np.uint16)
        return _SIXTEEN_TO_EIGHT_BITS[sixteen]
    return np.clip(array, 0, 255).astype(np.uint8)


# v -> round(v * 255 / 65535), the 16-to-8-bit scaling, as a table looked up once per pixel
_SIXTEEN_TO_EIGHT_BITS = ((np.arange(65536, dtype=np.int64) * 255 + 32767) // 65535).astype(np.uint8)
