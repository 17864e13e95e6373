"""Every data format reads the same images: folder, zip (in place), CIFAR pickles, LMDB."""

from __future__ import annotations

import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from _data_helpers import make_tree, shared_file, write_cifar10, zip_tree
from resnets.data import decode_to_memory, inspect_source, load_splits, open_dataset, open_source, pack_lmdb
from resnets.errors import ResnetsError


def pixels_of(dataset, index):
    return np.asarray(dataset[index][0])


def test_folder_with_splits(tmp_path):
    written = make_tree(tmp_path, classes=("dog", "cat", "emu"))
    (tmp_path / "val" / "zebra").mkdir()  # a class present in one split only
    make_tree(tmp_path, splits=("val",), classes=("zebra",), per_class=2, seed=1)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    (tmp_path / "train" / "cat" / ".hidden.png").write_bytes(b"ignored too")
    source = open_source(tmp_path)
    assert source.format == "folder" and set(source.splits) == {"train", "val"}
    train = open_dataset(tmp_path, split="train")
    val = open_dataset(tmp_path, split="val")
    assert train.classes == val.classes == ["cat", "dog", "emu", "zebra"]
    assert len(train) == 15 and len(val) == 17
    assert train.class_counts() == [5, 5, 5, 0]
    for index in (0, 7, 14):
        image, label = train[index]
        assert image.mode == "RGB"
        relative = os.path.relpath(train.describe(index), tmp_path)
        assert relative.split(os.sep)[1] == train.classes[label]
        np.testing.assert_array_equal(np.asarray(image), written[relative.replace(os.sep, "/")])


def test_flat_folder_and_split_required(tmp_path):
    make_tree(tmp_path / "flat", splits=(None,))
    flat = open_dataset(tmp_path / "flat")
    assert flat.classes == ["cat", "dog", "emu"] and len(flat) == 15
    make_tree(tmp_path / "split")
    with pytest.raises(ResnetsError, match="has splits"):
        open_dataset(tmp_path / "split")
    with pytest.raises(ResnetsError, match="no split 'test'"):
        open_dataset(tmp_path / "split", split="test")


@pytest.mark.parametrize("wrapper", ["", "mydata/"])
def test_zip_read_in_place_matches_folder(tmp_path, wrapper):
    make_tree(tmp_path / "tree")
    archive = zip_tree(tmp_path / "tree", tmp_path / "data.zip", wrapper=wrapper)
    for split in ("train", "val"):
        from_folder = open_dataset(tmp_path / "tree", split=split)
        from_zip = open_dataset(archive, split=split)
        assert from_zip.classes == from_folder.classes
        assert from_zip.targets == from_folder.targets
        assert from_zip.describe(3) == f"{archive}:{wrapper}{split}/cat/003.png"
        for index in range(len(from_zip)):
            np.testing.assert_array_equal(pixels_of(from_zip, index), pixels_of(from_folder, index))
    assert not any(p.name.endswith(".png") for p in tmp_path.iterdir())  # nothing unpacked
    renamed = archive.rename(tmp_path / "data.bin")  # recognised by content, whatever its name
    assert open_source(renamed).format == "zip"


def test_zip_dataset_pickles_for_worker_processes(tmp_path):
    make_tree(tmp_path / "tree")
    dataset = open_dataset(zip_tree(tmp_path / "tree", tmp_path / "d.zip"), split="train")
    dataset[0]  # opens a handle, which must not travel
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(pixels_of(clone, 4), pixels_of(dataset, 4))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_pickle_folder_and_tarball(tmp_path, protocol):
    expected = write_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for path in (tmp_path / "cifar-10-batches-py", tarball):
        source = open_source(path)
        assert source.format == "cifar-pickle" and source.classes == ["plane", "car", "bird"]
        for split in ("train", "test"):
            dataset = open_dataset(path, split=split)
            data, labels = expected[split]
            assert dataset.targets == labels
            images, decoded_labels = decode_to_memory(dataset, progress=False)
            np.testing.assert_array_equal(images.numpy(), data.reshape(-1, 3, 32, 32))
            assert decoded_labels.tolist() == labels
            np.testing.assert_array_equal(
                pixels_of(dataset, 2), data[2].reshape(3, 32, 32).transpose(1, 2, 0)
            )
        assert open_dataset(path, split="train").describe(1).endswith("data_batch_1_1.png")


def test_cifar100_layout(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    for split in ("train", "test"):
        batch = {
            "data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
            "fine_labels": [99, 0, 5, 5, 1, 2],
            "coarse_labels": [0] * 6,
            "filenames": [f"{split}{i}.png" for i in range(6)],
        }
        (folder / split).write_bytes(pickle.dumps(batch))
    train, test = load_splits(folder)
    assert len(train.classes) == 100 and train.targets == [99, 0, 5, 5, 1, 2] and len(test) == 6


class _RunsCommand:
    """What an attacker would plant in a downloaded batch: unpickling runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(
        pickle.dumps({"data": _RunsCommand(marker), "labels": []}, protocol=2)
    )
    with pytest.raises(
        ResnetsError,
        match=r"data_batch_1 is not a CIFAR batch .*refusing to load global "
        r"(posix|os|nt)\.system",
    ):
        open_dataset(folder, split="train")
    assert not marker.exists()
    (folder / "batches.meta").write_bytes(pickle.dumps(_RunsCommand(marker)))
    with pytest.raises(ResnetsError, match="refusing"):
        open_source(folder)
    assert not marker.exists()


def test_pickle_codec_gadget_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    # protocol-2 bytes are rebuilt by _codecs.encode; any codec other than latin-1 is refused
    doctored = pickle.dumps({"label_names": [b"x"]}, protocol=2).replace(b"latin1", b"rot13\x00"[:6])
    (folder / "batches.meta").write_bytes(doctored)
    with pytest.raises(ResnetsError, match="codec"):
        open_source(folder)


def test_lmdb_pack_round_trip_gives_identical_pixels(tmp_path, monkeypatch):
    from resnets.data import pack as lmdbstore

    monkeypatch.setattr(lmdbstore, "_WINDOW", 4)  # several write transactions per split
    make_tree(tmp_path / "tree")
    summary = pack_lmdb(tmp_path / "tree", tmp_path / "data.lmdb", progress=False)
    assert summary["splits"] == {"train": 15, "val": 15} and summary["skipped"] == []
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["data.lmdb"]  # no temp or lock file
    assert open_source(tmp_path / "data.lmdb").format == "lmdb"
    for split in ("train", "val"):
        folder, packed = (
            open_dataset(tmp_path / "tree", split=split),
            open_dataset(tmp_path / "data.lmdb", split=split),
        )
        assert packed.classes == folder.classes and packed.targets == folder.targets
        assert packed.describe(2) == f"{tmp_path / 'data.lmdb'}:{folder.describe(2)}"
        assert packed.encoded(5) == folder.encoded(5)
        images, labels = decode_to_memory(packed, progress=False)
        reference, reference_labels = decode_to_memory(folder, progress=False)
        assert torch.equal(images, reference) and torch.equal(labels, reference_labels)
    clone = pickle.loads(pickle.dumps(open_dataset(tmp_path / "data.lmdb", split="val")))
    np.testing.assert_array_equal(
        pixels_of(clone, 1), pixels_of(open_dataset(tmp_path / "tree", split="val"), 1)
    )


def test_lmdb_pack_from_zip_and_cifar_with_resize(tmp_path):
    make_tree(tmp_path / "tree", splits=(None,), size=(40, 60))
    archive = zip_tree(tmp_path / "tree", tmp_path / "flat.zip")
    pack_lmdb(archive, tmp_path / "small.lmdb", size=20, progress=False)
    packed = open_dataset(tmp_path / "small.lmdb")
    assert len(packed) == 15 and packed[0][0].size == (30, 20)  # shorter side 40 -> 20
    write_cifar10(tmp_path / "cifar")
    pack_lmdb(tmp_path / "cifar", tmp_path / "cifar.lmdb", progress=False)  # pixels stored as PNG
    original, packed = (
        open_dataset(tmp_path / "cifar", split="test"),
        open_dataset(tmp_path / "cifar.lmdb", split="test"),
    )
    assert torch.equal(decode_to_memory(original)[0], decode_to_memory(packed, progress=False)[0])


def test_lmdb_pack_failure_leaves_existing_file(tmp_path):
    (tmp_path / "data.lmdb").write_bytes(b"precious")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResnetsError):
        pack_lmdb(tmp_path / "empty", tmp_path / "data.lmdb", progress=False)
    assert (tmp_path / "data.lmdb").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.lmdb", "empty"]
    make_tree(tmp_path / "tree", splits=(None,), per_class=1)
    with pytest.raises(ResnetsError, match="is a folder"):
        pack_lmdb(tmp_path / "tree", tmp_path / "empty", progress=False)


def test_foreign_lmdb_is_refused(tmp_path):
    import lmdb

    env = lmdb.open(str(tmp_path / "caffe.lmdb"), subdir=False, lock=False, map_size=2**20)
    with env.begin(write=True) as txn:
        txn.put(b"00000000_img.jpg", b"datum protobuf")
    env.close()
    with pytest.raises(ResnetsError, match="not a database made by `resnets data pack`"):
        open_source(tmp_path / "caffe.lmdb")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "no such data set"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no images found"),
        (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "unknown data format"),
        (
            lambda p: (p / "bad.zip").write_bytes(b"PK not really") and p / "bad.zip",
            "cannot read zip archive",
        ),
    ],
)
def test_open_errors_are_one_line(tmp_path, make, message):
    with pytest.raises(ResnetsError, match=message) as caught:
        open_dataset(make(tmp_path))
    assert "\n" not in str(caught.value)


def test_load_splits_uses_held_out_folder(tmp_path):
    make_tree(tmp_path / "a", splits=("train", "test"))
    train, val = load_splits(tmp_path / "a", val_split=0.5)
    assert val.source.endswith("[test]") and len(train) == len(val) == 15
    make_tree(tmp_path / "b", splits=("train",))
    train, val = load_splits(tmp_path / "b")
    assert len(train) == 15 and val is None


def test_val_split_is_stratified_seeded_disjoint_and_complete(tmp_path):
    make_tree(tmp_path, splits=(None,), classes=("a", "b", "c", "d"), per_class=10, size=(2, 2))
    (tmp_path / "e").mkdir()
    make_tree(tmp_path, splits=(None,), classes=("e",), per_class=3, size=(2, 2))
    full = open_dataset(tmp_path)
    train, val = load_splits(tmp_path, val_split=0.2, seed=3)
    names = lambda ds: [ds.describe(i) for i in range(len(ds))]  # noqa: E731
    assert set(names(train)).isdisjoint(names(val))
    assert sorted(names(train) + names(val)) == sorted(names(full))
    assert val.class_counts() == [2, 2, 2, 2, 1]  # 20% of each class, at least one
    again_train, again_val = load_splits(tmp_path, val_split=0.2, seed=3)
    assert names(again_val) == names(val) and names(again_train) == names(train)
    assert names(load_splits(tmp_path, val_split=0.2, seed=4)[1]) != names(val)
    with pytest.raises(ResnetsError, match="val_split"):
        load_splits(tmp_path, val_split=1.5)


def test_inspect_reports_counts(tmp_path):
    make_tree(tmp_path)
    report = inspect_source(tmp_path, check=True)
    assert report["format"] == "folder" and report["unreadable"] == []
    assert report["splits"]["val"] == {"images": 15, "per_class": {"cat": 5, "dog": 5, "emu": 5}}


@pytest.mark.shared_data
def test_real_cifar10_zip_read_in_place():
    archive = shared_file("cifar10-jpeg.zip")
    train, test = load_splits(archive)
    assert len(train) == 50000 and len(test) == 10000
    assert train.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert train.class_counts() == [5000] * 10
    sample = train.subset(range(0, 50000, 250))
    images, labels = decode_to_memory(sample, progress=False)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [i // 20 for i in range(200)]
    assert 60 < images.float().mean() < 200  # real photos, not blank
    with zipfile.ZipFile(archive) as handle:
        assert handle.read(sample.describe(7).split(":", 1)[1]) == sample.encoded(7)
