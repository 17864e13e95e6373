"""Data sets, in-memory decoding, batch augmentation and loaders for training.

Typical use::

    train, val = load_splits("cifar10-jpeg.zip")                 # train/ + test/ in the zip
    images, labels = decode_to_memory(train)                     # uint8 (N, 3, 32, 32), once
    mean, std, size, preset = preset_for_model("resnet20")
    loader = TensorLoader(images, labels, batch_size=128,
                          augment=BatchAugment(preset, size, mean, std, train=True))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader: ...
"""

from .augment import PRESETS, BatchAugment, preset_for_model, storage_size
from .base import DataSource
from .collection import ImageCollection, is_collection, open_collection
from .dataset import ImageDataset, stratified_split
from .images import IMAGE_EXTENSIONS, BadImageError, BadImageWarning, decode_image
from .loader import TensorLoader, make_dataloader, torchvision_transform
from .memory import MEMORY_LIMIT_BYTES, decode_to_memory, fits_in_memory, memory_bytes
from .pack import pack_lmdb
from .sampling import shard_indices
from .sources import inspect_source, load_splits, open_dataset, open_source

__all__ = [
    "BadImageError", "BadImageWarning", "BatchAugment", "DataSource", "IMAGE_EXTENSIONS", "ImageCollection",
    "ImageDataset", "MEMORY_LIMIT_BYTES", "PRESETS", "TensorLoader", "decode_image", "decode_to_memory",
    "fits_in_memory", "inspect_source", "is_collection", "load_splits", "make_dataloader", "memory_bytes",
    "open_collection", "open_dataset", "open_source", "pack_lmdb", "preset_for_model", "shard_indices",
    "storage_size", "stratified_split", "torchvision_transform",
]
