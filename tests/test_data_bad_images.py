"""Corrupt files are skipped with a warning naming each; odd image modes come out as RGB."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from _data_helpers import encode, make_tree, zip_tree
from resnets.data import (
    BadImageError,
    BadImageWarning,
    decode_image,
    decode_to_memory,
    open_dataset,
    pack_lmdb,
)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (8, 8), dtype=np.uint16)


def odd_images() -> dict[str, tuple[bytes, np.ndarray]]:
    """Readable files in unusual modes, with the RGB pixels each must decode to."""
    cmyk = encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95)
    palette = Image.fromarray(RGB).quantize(colors=16)
    rgba = np.dstack([RGB, RNG.integers(0, 256, (8, 8), dtype=np.uint8)])
    gray = RGB[..., 0]
    gray16_to_8 = np.round(GRAY16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    return {
        "cmyk.jpg": (cmyk, np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))),
        "palette.png": (encode(palette, "PNG"), np.asarray(palette.convert("RGB"))),
        "rgba.png": (encode(Image.fromarray(rgba, "RGBA"), "PNG"), RGB),
        "gray.png": (encode(Image.fromarray(gray, "L"), "PNG"), np.repeat(gray[..., None], 3, axis=2)),
        "gray16.png": (encode(Image.fromarray(GRAY16), "PNG"), np.repeat(gray16_to_8[..., None], 3, axis=2)),
    }


def bad_files() -> dict[str, bytes]:
    jpeg = encode(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    return {"empty.jpg": b"", "truncated.jpg": jpeg[: len(jpeg) // 2], "text.png": b"just some text\n"}


@pytest.mark.parametrize("name", list(odd_images()))
def test_odd_modes_decode_to_rgb(name):
    data, expected = odd_images()[name]
    image = decode_image(data, name)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), expected)
    if name == "cmyk.jpg":  # a real colour conversion, not garbage: close to the RGB it came from
        assert np.abs(np.asarray(image).astype(int) - RGB).mean() < 12


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = decode_image(encode(Image.fromarray(ramp), "PNG"), "ramp.png")
    assert np.asarray(image)[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("name", list(bad_files()))
def test_bad_file_raises_naming_it(name):
    with pytest.raises(BadImageError, match=f"cannot decode image dir/{name}"):
        decode_image(bad_files()[name], f"dir/{name}")


def write_mixed_tree(root):
    make_tree(root, splits=(None,), classes=("a",), per_class=2, size=(8, 8))
    for name, (data, _) in odd_images().items():
        (root / "b").mkdir(exist_ok=True)
        (root / "b" / name).write_bytes(data)
    for name, data in bad_files().items():
        (root / "c").mkdir(exist_ok=True)
        (root / "c" / name).write_bytes(data)


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_decode_to_memory_skips_bad_files_with_one_warning_each(tmp_path, container):
    write_mixed_tree(tmp_path / "tree")
    path = tmp_path / "tree" if container == "folder" else zip_tree(tmp_path / "tree", tmp_path / "t.zip")
    dataset = open_dataset(path)
    assert len(dataset) == 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, labels = decode_to_memory(dataset, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, BadImageWarning)]
    assert len(messages) == 4
    for name in bad_files():
        assert sum(name in message for message in messages) == 1
    assert messages[-1].startswith("skipped 3 unreadable image(s) of 10")
    assert images.shape == (7, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1, 1, 1, 1]
    expected = {name: pixels for name, (_, pixels) in odd_images().items()}
    for row, name in enumerate(sorted(expected), start=2):
        np.testing.assert_array_equal(images[row].permute(1, 2, 0).numpy(), expected[name])


def test_decode_to_memory_needs_size_for_mixed_sizes(tmp_path):
    make_tree(tmp_path, splits=(None,), classes=("a",), per_class=2, size=(8, 8))
    make_tree(tmp_path, splits=(None,), classes=("b",), per_class=2, size=(10, 6))
    dataset = open_dataset(tmp_path)
    with pytest.raises(Exception, match="differ in size .* pass a size"):
        decode_to_memory(dataset, progress=False)
    images, _ = decode_to_memory(dataset, size=(4, 5), progress=False)
    assert images.shape == (4, 3, 4, 5)
    square = Image.open(tmp_path / "a" / "000.png").resize((4, 4), Image.BILINEAR)
    np.testing.assert_array_equal(
        decode_to_memory(dataset, size=4, progress=False)[0][0].permute(1, 2, 0).numpy(), np.asarray(square)
    )


def test_pack_skips_bad_files_too(tmp_path):
    write_mixed_tree(tmp_path / "tree")
    with pytest.warns(BadImageWarning) as caught:
        summary = pack_lmdb(tmp_path / "tree", tmp_path / "mixed.lmdb", progress=False)
    assert sorted(name.rsplit("/", 1)[1] for name in summary["skipped"]) == sorted(bad_files())
    assert "skipped 3 unreadable image(s) of 10" in str(caught[-1].message)
    images, _ = decode_to_memory(open_dataset(tmp_path / "mixed.lmdb"), progress=False)
    assert images.shape == (7, 3, 8, 8)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        reference, _ = decode_to_memory(open_dataset(tmp_path / "tree"), progress=False)
    assert torch.equal(images, reference)


def test_sixteen_and_thirty_two_bit_scaling_is_exact_and_frugal():
    """Every 16-bit value maps to round(v * 255 / 65535), 32-bit values are clipped to 16 bits
    first, and a 32 M-pixel 16-bit image converts with one byte-sized temporary, not int64 ones."""
    import tracemalloc

    from resnets.data.images import to_rgb

    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = ((every.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(every)))[..., 0], expected)
    wide = np.array([[-5, 0, 300, 65535, 70000]], dtype=np.int32)
    assert np.asarray(to_rgb(Image.fromarray(wide)))[0, :, 0].tolist() == [0, 0, 1, 255, 255]
    tall = Image.new("I;16", (9, 3_538_951))
    tracemalloc.start()
    to_rgb(tall)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # about 4 bytes a pixel (the array copy, the 8-bit result); int64 intermediates took 16 and more
    assert peak < 6 * 9 * 3_538_951, peak
