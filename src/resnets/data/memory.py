"""Decoding a whole data set once into one uint8 tensor, for sets that fit in memory.

Small data sets (CIFAR, Imagenette at 224 px) are decoded once, in worker threads (PIL
releases the GIL while decoding), and then augmented as tensors in batches, so no epoch
ever decodes a file again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ..errors import ResnetsError
from .dataset import ImageDataset
from .images import BadImageError, SkippedImages

# Above this many bytes of decoded pixels, stream from disk with a DataLoader instead.
MEMORY_LIMIT_BYTES = 4 * 2**30


def memory_bytes(count: int, size: tuple[int, int]) -> int:
    """Bytes of uint8 RGB pixels for ``count`` images of ``size`` (H, W)."""
    return count * 3 * size[0] * size[1]


def fits_in_memory(dataset: ImageDataset, size: tuple[int, int], limit: int = MEMORY_LIMIT_BYTES) -> bool:
    return memory_bytes(len(dataset), size) <= limit


def decode_to_memory(dataset: ImageDataset, size: tuple[int, int] | int | None = None, workers: int = 2,
                     progress: bool = True, preprocessing: Any = None,
                     return_kept: bool = False) -> tuple[torch.Tensor, ...]:
    """All readable images of ``dataset`` as uint8 (N, 3, H, W) and their labels as int64 (N,)
    (``return_kept``: and their indices); the unreadable ones are skipped with warnings.

    ``size``: (H, W) or a side to which each image is resized and centre-cropped (None: the
    images' own, equal size); ``preprocessing``: a model's record, whose ``resize_crop`` is used
    instead (its ``input_size`` is then the size).
    """
    if preprocessing is not None:
        size = (preprocessing.input_size, preprocessing.input_size)
    if isinstance(size, int):
        size = (size, size)
    fit = preprocessing.resize_crop if preprocessing is not None else None
    stored = dataset.as_uint8()
    if stored is not None and fit is not None and preprocessing.keeps(*stored.shape[-2:]):
        fit = None  # already what the model takes (CIFAR at 32 px): no decoding at all
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    if stored is not None and fit is None and (size is None or tuple(stored.shape[-2:]) == tuple(size)):
        images, readable = stored, torch.ones(len(stored), dtype=torch.bool)
    else:
        images, readable = _decode_all(dataset, size, fit, workers, progress)
        skipped = SkippedImages()
        for index in torch.nonzero(~readable).flatten().tolist():
            skipped.add(dataset.describe(index))
        skipped.warn_count(dataset.source, total=len(dataset))
        if skipped.names:
            images, labels = images[readable], labels[readable]
    kept = torch.nonzero(readable).flatten()
    return (images, labels, kept) if return_kept else (images, labels)


def _decode_all(dataset: ImageDataset, size: tuple[int, int] | None,
                fit: Callable[[Image.Image], Image.Image] | None, workers: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (N, 3, H, W) images, bool (N,) readable); the first readable image sets (H, W)."""
    count = len(dataset)
    if count == 0:
        raise ResnetsError(f"data set {dataset.source} is empty")
    readable = torch.zeros(count, dtype=torch.bool)
    with tqdm(total=count, desc="decoding", unit="img", disable=not progress, leave=False) as bar:
        first, array = next(((i, a) for i in range(count) if (a := _load(dataset, i, size, fit)) is not None),
                            (count, None))
        bar.update(first + 1)
        if array is None:
            raise ResnetsError(f"no readable images in {dataset.source}")
        images = torch.empty((count, 3, *array.shape[:2]), dtype=torch.uint8)
        pixels = images.numpy()  # numpy copies: no torch thread pool inside decoding threads
        pixels[first] = array.transpose(2, 0, 1)
        readable[first] = True

        def fill(chunk: range) -> None:
            for index in chunk:
                array = _load(dataset, index, size, fit)
                if array is not None:
                    if array.shape[:2] != tuple(images.shape[-2:]):
                        raise ResnetsError(
                            f"images of {dataset.source} differ in size ({dataset.describe(index)} is "
                            f"{array.shape[1]}x{array.shape[0]}, others {images.shape[-1]}x"
                            f"{images.shape[-2]}); pass a size to resize them")
                    pixels[index] = array.transpose(2, 0, 1)
                    readable[index] = True
            bar.update(len(chunk))

        chunks = [range(start, min(start + _CHUNK, count)) for start in range(first + 1, count, _CHUNK)]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(fill, chunks))  # re-raises a worker's error here
    return images, readable


_CHUNK = 256


def _load(dataset: ImageDataset, index: int, size: tuple[int, int] | None,
          fit: Callable[[Image.Image], Image.Image] | None = None) -> np.ndarray | None:
    """Item ``index`` as an HWC uint8 array (fitted to ``size`` if given), or None if unreadable."""
    try:
        image = dataset[index][0]
    except BadImageError:
        return None
    if fit is not None:
        image = fit(image)
    elif size is not None and image.size != (size[1], size[0]):
        image = ImageOps.fit(image, (size[1], size[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
