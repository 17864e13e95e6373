"""WebDataset shards and local Hugging Face data sets (Parquet, save_to_disk) as training sources."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _train_fixtures import assert_resume_is_bitwise, tiny_config, write_folder_dataset
from resnets.cli import main
from resnets.data import BadImageError, BadImageWarning, load_splits, open_source
from resnets.data.pack import pack_wds
from resnets.train import train


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4})


@pytest.fixture(scope="module")
def wds_data(folder_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "wds"
    pack_wds(folder_data, out, shard_size=5, progress=False)
    return out


def _items(dataset) -> list[tuple[bytes, int]]:
    return [(np.asarray(dataset[i][0]).tobytes(), dataset[i][1]) for i in range(len(dataset))]


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _hf_table(dataset, image_struct: bool = True) -> pa.Table:
    """A table as ``datasets`` writes it: an Image feature (struct bytes/path) and a ClassLabel."""
    images = [dataset.encoded(i) for i in range(len(dataset))]
    column = (pa.array([{"bytes": b, "path": None} for b in images],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
              if image_struct else pa.array(images, type=pa.binary()))
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": list(dataset.classes)}}
    table = pa.table({"image": column, "label": pa.array(dataset.targets, type=pa.int64())})
    return table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})


@pytest.fixture(scope="module")
def parquet_data(folder_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parquet")
    (root / "data").mkdir()
    train_set, val_set = load_splits(folder_data)
    pq.write_table(_hf_table(train_set), root / "data" / "train-00000-of-00001.parquet", row_group_size=7)
    pq.write_table(_hf_table(val_set), root / "data" / "test-00000-of-00001.parquet")
    return root


def test_packed_shards_hold_the_folder_images(folder_data, wds_data):
    manifest = json.loads((wds_data / "manifest.json").read_text())
    assert manifest["splits"]["train"] == [f"train-{k:06d}.tar" for k in range(5)]  # 24 images, 5 a shard
    assert manifest["counts"] == {"train": 24, "val": 12}
    source = open_source(wds_data)
    assert source.format == "webdataset" and source.classes == ["class0", "class1", "class2"]
    for ours, theirs in zip(load_splits(wds_data), load_splits(folder_data)):
        assert _items(ours) == _items(theirs)
    assert load_splits(wds_data)[0].describe(5) == f"{wds_data / 'train-000001.tar'}:000000005.png"


def test_packed_shards_open_from_their_index_and_detect_a_changed_shard(wds_data, tmp_path, monkeypatch):
    from resnets.data import shards

    expected = _items(load_splits(wds_data)[0])
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in wds_data.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    with monkeypatch.context() as patch:  # opening reads the index files, never scans a shard
        patch.setattr(shards, "_index_shard", None)
        dataset = load_splits(copy)[0]
        assert _items(dataset) == expected
    # same size, other content (members swapped): the index no longer matches, reads say so
    shard = copy / "train-000000.tar"
    with tarfile.open(shard) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    names = sorted(members)
    members = {names[2]: members[names[2]], names[3]: members[names[3]],
               names[0]: members[names[0]], names[1]: members[names[1]], **members}
    size = shard.stat().st_size
    _write_shard(shard, members)
    assert shard.stat().st_size == size
    with pytest.raises(BadImageError, match="changed since its index"):
        load_splits(copy)[0].encoded(0)
    _write_shard(shard, {name: members[name] for name in names[:6]})  # another size: the shard is scanned
    assert load_splits(copy)[0].targets[:3] == [0, 0, 0]


def test_shards_interoperate_with_the_webdataset_library(wds_data, tmp_path):
    webdataset = pytest.importorskip("webdataset")
    theirs = webdataset.WebDataset(str(wds_data / "val-000000.tar"), shardshuffle=False).to_tuple("__key__", "cls")
    assert [int(label) for _, label in theirs] == [0, 0, 0, 0, 1]
    train_set = load_splits(wds_data)[0]
    with webdataset.TarWriter(str(tmp_path / "shard-0.tar")) as sink:  # their writer, our reader
        for i in range(6):
            sink.write({"__key__": f"s{i}", "jpg": train_set.encoded(i), "cls": train_set.targets[i]})
    ours = open_source(tmp_path / "shard-0.tar").dataset(None)
    assert ours.targets == train_set.targets[:6] and _items(ours) == _items(train_set.subset(range(6)))


def _write_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_corrupt_and_unlabelled_samples_are_skipped_and_named(tmp_path):
    rng = np.random.default_rng(0)
    good = {f"k{i}.png": _png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for i in range(4)}
    labels = {f"k{i}.cls": str(i % 2).encode() for i in range(4)}
    shard = _write_shard(tmp_path / "s.tar", {**good, **labels, "bad.png": b"not a png", "bad.cls": b"1",
                                              "nolabel.png": good["k0.png"], "biglabel.png": good["k0.png"],
                                              "biglabel.cls": b"9" * 100})
    with pytest.warns(BadImageWarning) as caught:
        dataset = open_source(shard).dataset(None)
    assert sorted(str(w.message).split(":")[1] for w in caught) == ["biglabel.png", "nolabel.png"]
    assert len(dataset) == 5 and dataset.classes == ["0", "1"]
    with pytest.raises(BadImageError, match=r"s\.tar:bad\.png"):
        dataset[4]
    # a size in the header larger than an image may be is refused before reading
    from resnets.data import shards

    sample = dataset.samples[0]
    dataset.samples[0] = sample._replace(size=shards.MAX_IMAGE_BYTES + 1)
    with pytest.raises(BadImageError, match="more than"):
        dataset.encoded(0)
    dataset.samples[0] = sample._replace(offset=shard.stat().st_size - 10)
    with pytest.raises(BadImageError, match="truncated"):
        dataset.encoded(0)


def test_training_skips_a_corrupt_sample_in_a_shard_and_names_it(folder_data, tmp_path):
    out = tmp_path / "wds"
    pack_wds(folder_data, out, shard_size=100, progress=False)
    shard = out / "train-000000.tar"
    with tarfile.open(shard) as archive:
        member = archive.getmember("000000004.png")
    with open(shard, "r+b") as handle:  # bit rot inside one image: same size, garbage pixel data
        handle.seek(member.offset_data + 40)
        handle.write(b"\xff" * (member.size - 50))
    config = tiny_config(tmp_path / "run", data=str(out), stream=True, workers=0, img_size=16, epochs=1)
    with pytest.warns(BadImageWarning) as caught:
        result = train(config)
    skipped = {str(w.message) for w in caught if "skipped unreadable image" in str(w.message)}
    assert skipped == {f"skipped unreadable image {shard}:000000004.png"}
    assert len(result.history) == 1


def _one_line_exit_2(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("resnets: error: ")
    return err


def test_bad_inputs_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "train-000000.tar").write_bytes(b"this is not a tar file" * 40)
    assert "not an uncompressed tar" in _one_line_exit_2(["data", "info", str(tmp_path / "shards")], capsys)
    pq.write_table(pa.table({"caption": ["a", "b"], "label": [0, 1]}), tmp_path / "noimage.parquet")
    assert "no image column" in _one_line_exit_2(["data", "info", str(tmp_path / "noimage.parquet")], capsys)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 but nothing else")
    assert "cannot read" in _one_line_exit_2(["data", "info", str(tmp_path / "broken.parquet")], capsys)
    (tmp_path / "gz.tar").write_bytes(_gzipped_tar())
    assert "uncompressed" in _one_line_exit_2(["data", "info", str(tmp_path / "gz.tar")], capsys)
    with tarfile.open(tmp_path / "pax.tar", "w", format=tarfile.PAX_FORMAT) as archive:  # a 3 MiB pax header
        info = tarfile.TarInfo("a.cls")
        info.size, info.pax_headers = 1, {"comment": "x" * 3 * 2**20}
        archive.addfile(info, io.BytesIO(b"0"))
    assert "tar header of more than" in _one_line_exit_2(["data", "info", str(tmp_path / "pax.tar")], capsys)
    from resnets.data import hfdata

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hfdata, "pa", None)
        assert "needs pyarrow" in _one_line_exit_2(["data", "info", str(tmp_path / "noimage.parquet")], capsys)
    assert "shard size" in _one_line_exit_2(["data", "pack", str(tmp_path / "noimage.parquet"),
                                             str(tmp_path / "o"), "--format", "wds", "--shard-size", "0"], capsys)


def _gzipped_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("a.cls")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"0"))
    return buffer.getvalue()


def test_pack_cli_writes_shards(folder_data, tmp_path, capsys):
    with pytest.raises(SystemExit, match="0"):
        main(["data", "pack", str(folder_data), str(tmp_path / "out"), "--format", "wds", "--shard-size", "10"])
    assert "train 24, val 12 images" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("*.tar"))) == 5
    assert "already holds" in _one_line_exit_2(["data", "pack", str(folder_data), str(tmp_path / "out"),
                                                "--format", "wds"], capsys)


def test_parquet_reads_as_the_folder_does(folder_data, parquet_data):
    source = open_source(parquet_data)
    assert source.format == "parquet" and set(source.splits) == {"train", "test"}
    assert source.classes == ["class0", "class1", "class2"]
    for ours, theirs in zip(load_splits(parquet_data), load_splits(folder_data)):
        assert ours.targets == theirs.targets and _items(ours) == _items(theirs)
    assert "row group 1 row 3" in load_splits(parquet_data)[0].describe(10)


def test_plain_parquet_with_binary_images_and_string_labels(folder_data, tmp_path):
    train_set = load_splits(folder_data)[0]
    names = [train_set.classes[t] for t in train_set.targets]
    images = [train_set.encoded(i) for i in range(len(train_set))]
    pq.write_table(pa.table({"img": pa.array(images, pa.binary()), "label": names}), tmp_path / "x.parquet")
    dataset = open_source(tmp_path / "x.parquet").dataset(None)
    assert dataset.classes == ["class0", "class1", "class2"] and dataset.targets == train_set.targets
    assert _items(dataset) == _items(train_set)


def test_parquet_row_group_cache_is_bounded_and_null_labels_are_named(folder_data, tmp_path, monkeypatch):
    from resnets.data import hfdata

    train_set = load_splits(folder_data)[0]
    table = _hf_table(train_set)
    labels = table.column("label").to_pylist()
    labels[3] = None
    table = table.set_column(1, pa.field("label", pa.int64()), pa.array(labels, pa.int64()))
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=4)
    named = r"skipped 1 row\(s\) without a known label: .*x\.parquet row group 0 row 3"
    with pytest.warns(BadImageWarning, match=named):
        dataset = open_source(tmp_path / "x.parquet").dataset(None)
    group_bytes = pq.ParquetFile(tmp_path / "x.parquet").read_row_group(0, columns=["image"]).nbytes
    monkeypatch.setattr(hfdata, "ROW_GROUP_CACHE_BYTES", 2 * group_bytes)
    keep = [i for i in range(len(train_set)) if i != 3]
    assert _items(dataset) == _items(train_set.subset(keep))
    assert len(dataset._cache) <= 3 and dataset._cached_bytes <= 2 * group_bytes + max(
        c.nbytes for c in dataset._cache.values())


def test_parquet_rows_naming_image_files_by_path(folder_data, tmp_path):
    """``datasets`` keeps local image files as paths in Parquet (bytes null): read beside the file."""
    train_set = load_splits(folder_data)[0]
    (tmp_path / "pics").mkdir()
    for i in range(4):
        (tmp_path / "pics" / f"{i}.png").write_bytes(train_set.encoded(i))
    paths = [f"pics/{i}.png" for i in range(4)] + ["pics/missing.png"]
    column = pa.array([{"bytes": None, "path": p} for p in paths],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": column, "label": [*train_set.targets[:4], 2]}), tmp_path / "x.parquet")
    dataset = open_source(tmp_path / "x.parquet").dataset(None)
    assert _items(dataset.subset(range(4))) == _items(train_set.subset(range(4)))
    with pytest.raises(BadImageError, match="missing.png"):
        dataset[4]


def test_save_to_disk_folder_is_read_without_datasets(folder_data, tmp_path):
    """The layout of ``DatasetDict.save_to_disk``: dataset_dict.json, split folders, Arrow IPC streams."""
    root = tmp_path / "saved"
    splits = dict(zip(("train", "validation"), load_splits(folder_data)))
    for split, dataset in splits.items():
        (root / split).mkdir(parents=True)
        table = _hf_table(dataset)
        files = []
        for k, part in enumerate((table.slice(0, 10), table.slice(10))):
            files.append(f"data-{k:05d}-of-00002.arrow")
            with pa.ipc.new_stream(root / split / files[-1], part.schema) as writer:
                writer.write_table(part)
        (root / split / "state.json").write_text(json.dumps({"_data_files": [{"filename": f} for f in files]}))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    source = open_source(root)
    assert source.format == "hf-arrow" and source.splits == ("train", "validation")
    for ours, theirs in zip(load_splits(root), splits.values()):
        assert ours.targets == theirs.targets and _items(ours) == _items(theirs)


@pytest.mark.parametrize("kind, workers, resume_workers", [("wds", 0, 2), ("parquet", 2, 0)])
def test_streamed_resume_is_bitwise_exact(kind, workers, resume_workers, wds_data, parquet_data, tmp_path):
    data = str(wds_data if kind == "wds" else parquet_data)
    options = dict(data=data, stream=True, workers=workers, img_size=16, augment="cifar", epochs=2,
                   sched="onecycle")
    assert_resume_is_bitwise(tmp_path, options, resume_workers)
