"""Issue 24's small things, in the files they live in: a WebDataset shard cut at a header
boundary says so, and file names with terminal escapes are printed escaped."""

from __future__ import annotations

import io
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

from resnets.data import BadImageWarning, open_source
from resnets.data.shards import INDEX_SUFFIX, write_shard


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def shard(tmp_path):
    name = write_shard(tmp_path, "data", 0, 0, [(i % 2, _png(i)) for i in range(6)])
    (tmp_path / (name + INDEX_SUFFIX)).unlink()  # a shard copied without its index: scanned
    return tmp_path / name


@pytest.mark.parametrize("kept", [2, 4])
def test_a_shard_cut_at_a_header_boundary_says_samples_are_missing(shard, kept):
    """Old code: 2 or 4 of 6 samples, without a word (tarfile ends quietly at a header-sized EOF)."""
    with tarfile.open(shard) as archive:
        cut = archive.getmembers()[2 * kept].offset  # each sample: an image and its .cls
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.warns(BadImageWarning, match=r"is cut short: it ends at byte \d+ without tar's end-of-archive"):
        source = open_source(shard)
    assert len(source.dataset(None)) == kept


@pytest.mark.parametrize("damage", ["part of a header", "bytes that are no header"])
def test_a_shard_cut_inside_a_header_or_damaged_after_a_member_says_samples_are_missing(shard, damage):
    """tarfile also ends quietly on a header cut short (TruncatedHeaderError) or on a block that
    is no header (InvalidHeaderError): the warning used to look only for nothing at all."""
    with tarfile.open(shard) as archive:
        cut = archive.getmembers()[4].offset  # two samples kept
    data = shard.read_bytes()
    shard.write_bytes(data[:cut + 100] if damage == "part of a header" else data[:cut] + b"\x07" * 1024)
    with pytest.warns(BadImageWarning, match=r"is cut short: it ends at byte \d+ without tar's end-of-archive"):
        source = open_source(shard)
    assert len(source.dataset(None)) == 2


def test_a_whole_shard_gives_no_warning(shard):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(open_source(shard).dataset(None)) == 6


def test_a_shard_cut_inside_a_member_is_still_an_error_or_a_warning(shard):
    with tarfile.open(shard) as archive:
        member = archive.getmembers()[4]
    shard.write_bytes(shard.read_bytes()[:member.offset_data + 10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            open_source(shard)
        except ValueError as error:  # ResnetsError: "cannot read shard ..."
            assert "shard" in str(error)
            return
    assert any("cut short" in str(w.message) for w in caught)


def test_predict_prints_skipped_file_names_with_escapes_escaped(tmp_path, run_cli):
    from resnets import create_model
    from resnets.weights import save_weights

    weights = save_weights(tmp_path / "w.safetensors", create_model(
        "resnet20", num_classes=2, layers=(1, 1, 1), widths=(4, 8, 8), stem_width=4), class_names=["a", "b"])
    good, bad = tmp_path / "good.png", tmp_path / "bad\x1b[2J\x1b]0;pwned\x07.png"
    good.write_bytes(_png(0))
    bad.write_bytes(b"not an image")
    status, out, err = run_cli("predict", weights, good, bad)
    assert status == 0 and "\x1b" not in err and "\x07" not in err and "\x1b" not in out
    assert "bad\\x1b[2J\\x1b]0;pwned\\x07.png" in err
