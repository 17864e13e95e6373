"""Admission control of ``resnets serve``: what a request may ask of the server, checked before
anything is decoded (issue 24).

A request is refused with one line (413, naming the limit and its flag) when it holds more images
than ``--max-images`` or more decoded pixels, all its images together, than ``--max-pixels``;
each image is also held to the project's one decode budget
(:func:`resnets.preprocessing.check_pixels`). Sizes are read from each image's header (PIL opens
lazily: ``Image.open(...).size`` decodes nothing), and elements are counted before they are
materialised (:mod:`.v2` stops reading a length-prefixed body at the first element over the
limit). An empty element or bytes that are no image are a 400 here, before any decoding starts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from ..errors import first_line
from ..preprocessing import MAX_PIXELS, PixelBudgetError, check_pixels

DEFAULT_MAX_IMAGES = 256
DEFAULT_MAX_PIXELS = MAX_PIXELS  # a request may decode as many pixels as the largest single image


class ServeError(Exception):
    """A request refused: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Per request: at most ``max_images`` images (``--max-images``) and ``max_pixels`` decoded
    pixels, all images together (``--max-pixels``)."""

    max_images: int = DEFAULT_MAX_IMAGES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def check_count(self, count: int, what: str = "images") -> None:
        """413 when a request holds (or declares) more than ``max_images`` images."""
        if count > self.max_images:
            raise ServeError(413, f"the request holds {count} {what}, over the limit of {self.max_images} "
                                  f"images per request (--max-images)")

    def check_total(self, pixels: int, count: int) -> None:
        """413 when ``count`` images hold more than ``max_pixels`` pixels together."""
        if pixels > self.max_pixels:
            raise ServeError(413, f"the request's {count} image(s) hold {pixels} pixels, over the limit of "
                                  f"{self.max_pixels} decoded pixels per request (--max-pixels)")


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """The (width, height) an image's header declares, nothing decoded; 400 when ``data`` is empty
    or no image, 413 when the image alone is over the decode budget."""
    if not data:
        raise ServeError(400, f"empty {name}: send the bytes of an image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        check_pixels(width, height)
    except PixelBudgetError as error:
        raise ServeError(413, f"{name}: {error}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ServeError(413, f"{name}: {first_line(error)}") from None
    except Image.UnidentifiedImageError:
        raise ServeError(400, f"cannot decode image {name}: not an image format PIL can read") from None
    except Exception as error:  # noqa: BLE001 - a header PIL refuses is the client's
        raise ServeError(400, f"cannot decode image {name}: {first_line(error)}") from None
    return width, height


def admit_images(images: list[tuple[bytes, str]], limits: Limits) -> int:
    """Check a request's images (bytes, name) against ``limits`` from their headers alone; their
    decoded pixels, all together."""
    limits.check_count(len(images))
    total = 0
    for data, name in images:
        width, height = image_size(data, name)
        total += width * height
        limits.check_total(total, len(images))
    return total
