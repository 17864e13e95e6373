"""Fuzzing every reader of a user's file (issue 24): only ResnetsError comes out, memory stays bounded.

Each property draws a file (a valid one the project writes, then mutated: bytes flipped, set,
inserted, deleted, cut, numbers in it made huge; or a header built field by field) and has it read
in a child process (``tests/_fuzz_child.py``) under an address-space limit: the outcome must be a
value or a :class:`ResnetsError`, never another exception, a MemoryError or a crash, and the peak
resident memory may rise by at most :data:`MAX_GROWTH_MB` while reading.

``make test`` runs these with Hypothesis' default budget; ``make fuzz`` with the ``fuzz`` profile
(``tests/conftest.py``: many more examples, about ten minutes in all). Failures it found are kept
below as plain tests (``test_found_*``).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MAX_GROWTH_MB = 600
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class FuzzChild:
    """The reading process; restarted after it dies (the death is the failing example's)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_fuzz_child.py")], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert json.loads(process.stdout.readline()) == {"ready": True}
        return process

    def read(self, reader: str, files: dict[str, bytes]) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        request = {"reader": reader, "files": {name: base64.b64encode(data).decode() for name, data in files.items()}}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            status = self.process.wait()
            return {"outcome": f"the reading process died (status {status})", "detail": "", "grew_mb": 0}
        return json.loads(line)

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def child():
    reader = FuzzChild()
    yield reader
    reader.close()


def assert_contained(answer: dict) -> None:
    """Only ``ResnetsError`` came out, and the peak resident size grew by less than the bound (where
    the child could not reset its peak, growth past earlier peaks; its RLIMIT_AS bounds it anyway)."""
    assert answer["outcome"] in ("ok", "ResnetsError"), f"{answer['outcome']}\n{answer['detail']}"
    assert answer["grew_mb"] < MAX_GROWTH_MB, answer


# -- mutations of a valid file -----------------------------------------------------------------

HUGE = [0, 1, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` with a few random edits; at least one edit unless the draw says none."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "word", "number"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "cut":
            del data[at:]
        elif op == "word":  # a 4- or 8-byte field (a size, a dimension, an offset) made extreme
            width, order = draw(st.sampled_from([(4, "<I"), (4, ">I"), (8, "<Q"), (8, ">Q")]))
            value = draw(st.sampled_from(HUGE)) % (1 << (8 * width))
            data[at:at + width] = struct.pack(order, value)
        elif op == "number":  # a decimal number in text made huge, negative or long
            digits = [i for i, byte in enumerate(data) if 48 <= byte <= 57]
            if digits:
                start = draw(st.sampled_from(digits))
                end = start
                while end < len(data) and 48 <= data[end] <= 57:
                    end += 1
                data[start:end] = draw(st.sampled_from([b"0", b"-1", b"99999999999", b"1e308", b"9" * 400,
                                                         b"4294967296", b"nan", b"-0"]))
    return bytes(data)


# -- seeds: valid files the project writes or reads ---------------------------------------------

def _image_bytes(fmt: str, size=(9, 7), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


@functools.cache
def image_seeds() -> list[bytes]:
    return [_image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")] + \
        [_image_bytes("PNG", mode="L"), _image_bytes("PNG", mode="RGBA"), _image_bytes("TIFF", mode="I;16")]


def _png_with(width: int, height: int, depth: int = 8, colour: int = 2, payload: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@functools.cache
def tiny_model():
    from resnets import create_model
    return create_model("resnet20", num_classes=3, layers=(1, 1, 1), widths=(4, 8, 8), stem_width=4)


@functools.cache
def weights_seed() -> bytes:
    from resnets.weights.format import weights_bytes
    return weights_bytes(tiny_model(), class_names=["a", "b", "c"])


@functools.cache
def caffe_seeds(tmp: str) -> tuple[bytes, bytes]:
    from resnets.weights.caffe import export_caffe
    folder = Path(tmp)
    folder.mkdir(parents=True, exist_ok=True)
    from resnets import create_model
    model = create_model("resnet18", num_classes=3, layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), stem_width=4)
    export_caffe(model, folder / "net.prototxt", folder / "net.caffemodel", input_size=(3, 32, 32))
    return (folder / "net.prototxt").read_bytes(), (folder / "net.caffemodel").read_bytes()


@functools.cache
def index_seeds() -> tuple[bytes, bytes]:
    vectors = np.eye(3, 4, dtype=np.float32)
    meta = {"format": "resnets-embeddings", "version": 1, "dim": 4, "count": 3}
    record = {**meta, "rows": [{"path": f"{i}.png", "label": "a", "item": i} for i in range(3)]}
    return _npy_bytes(vectors), json.dumps(record).encode()


@functools.cache
def shard_seed(tmp: str) -> tuple[bytes, bytes]:
    from resnets.data.shards import write_shard
    Path(tmp).mkdir(parents=True, exist_ok=True)
    name = write_shard(Path(tmp), "data", 0, 0, [(i % 2, _image_bytes("PNG", (5, 5))) for i in range(4)])
    return (Path(tmp) / name).read_bytes(), (Path(tmp) / (name + ".idx.json")).read_bytes()


RECIPES = sorted((ROOT / "src" / "resnets" / "recipes").glob("*.yaml"))
LABEL_CSV = b"path,labels\n0.png,cat dog\n1.png,dog\n2.png,\n"
LABEL_JSONL = b'{"path": "0.png", "labels": ["cat", "dog"]}\n{"path": "1.png", "labels": ["dog"]}\n'
CLASSES_TXT = b"cat\ndog\n"


# -- the properties ----------------------------------------------------------------------------

@FUZZ
@given(st.data())
def test_image_files(child, data):
    seed = data.draw(st.sampled_from(image_seeds()))
    assert_contained(child.read("image", {"x.img": data.draw(mutated(seed))}))


@FUZZ
@given(st.sampled_from(HUGE[1:6] + [100_000, 65_535]), st.sampled_from(HUGE[1:6] + [1, 100_000]),
       st.sampled_from([1, 2, 4, 8, 16]), st.sampled_from([0, 2, 3, 4, 6]), st.binary(max_size=64))
def test_png_headers_declaring_any_size(child, width, height, depth, colour, payload):
    """A few hundred bytes may declare any size: the decode budget is checked before pixels exist,
    and the resize of a long thin image (100,000 x 1) is checked too."""
    assert_contained(child.read("image", {"x.png": _png_with(width, height, depth, colour, payload)}))


DTYPES = ["<f4", "<f8", "|u1", "<i8", ">f4", "|O", "<U8", "|V16", "<c16", "|b1", "<M8[s]", "f4,f4", "<f2"]


@FUZZ
@given(st.lists(st.integers(0, 2**45), max_size=4), st.sampled_from(DTYPES), st.booleans(),
       st.integers(0, 256), st.sampled_from([(1, 0), (2, 0), (3, 0), (9, 9)]))
def test_npy_headers_declaring_any_shape(child, shape, descr, fortran, payload, version):
    header = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    length = struct.pack("<H", len(header)) if version[0] == 1 else struct.pack("<I", len(header))
    data = b"\x93NUMPY" + bytes(version) + length + header + b"\0" * payload
    assert_contained(child.read("npy", {"x.npy": data}))


@FUZZ
@given(st.data())
def test_npy_files(child, data):
    seed = data.draw(st.sampled_from([_npy_bytes(np.zeros((3, 4), np.float32)), _npy_bytes(np.arange(5))]))
    assert_contained(child.read("npy", {"x.npy": data.draw(mutated(seed))}))


@FUZZ
@given(st.data())
def test_recipes(child, data):
    seed = data.draw(st.sampled_from(RECIPES)).read_bytes()
    assert_contained(child.read("recipe", {"r.yaml": data.draw(mutated(seed))}))


YAML_PIECES = ["a: ", "&x ", "*x ", "[", "]", "{", "}", "- ", "\n", "  ", "!!python/object:os.system ", "!!int ",
               "!!float ", "1e999", "9" * 50, "? ", ": ", ",", "'", '"', "<<: *x\n", "epochs: ", "lr: ", "model: "]


@FUZZ
@given(st.lists(st.sampled_from(YAML_PIECES), max_size=60).map("".join))
def test_recipe_soup(child, text):
    assert_contained(child.read("recipe", {"r.yaml": text.encode()}))


@FUZZ
@given(st.data())
def test_weights_files(child, data):
    assert_contained(child.read("weights", {"w.safetensors": data.draw(mutated(weights_seed()))}))


SAFETENSOR_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "X", ""]


@FUZZ
@given(st.dictionaries(st.sampled_from(["conv1.weight", "fc.weight", "fc.bias", "bn1.weight", "x"]),
                       st.fixed_dictionaries({"dtype": st.sampled_from(SAFETENSOR_DTYPES),
                                              "shape": st.lists(st.integers(0, 2**40), max_size=4),
                                              "data_offsets": st.lists(st.integers(0, 2**40), min_size=2, max_size=2)}),
                       max_size=4),
       st.one_of(st.none(), st.dictionaries(st.sampled_from(["model_name", "config", "class_names", "preprocessing",
                                                             "args", "format", "extra"]),
                                            st.text(max_size=40), max_size=5)),
       st.integers(0, 512))
def test_safetensors_headers(child, tensors, metadata, payload):
    header = dict(tensors)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    data = struct.pack("<Q", len(text)) + text + b"\0" * payload
    assert_contained(child.read("weights", {"w.safetensors": data}))


@FUZZ
@given(st.data())
def test_prototxt_and_caffemodel(child, tmp_path_factory, data):
    prototxt, caffemodel = caffe_seeds(str(tmp_path_factory.getbasetemp() / "caffe-seed"))
    files = {"net.prototxt": data.draw(mutated(prototxt))}
    if data.draw(st.booleans()):
        files["net.caffemodel"] = data.draw(mutated(caffemodel))
    assert_contained(child.read("caffe", files))


@FUZZ
@given(st.data())
def test_caffemodel(child, tmp_path_factory, data):
    _, caffemodel = caffe_seeds(str(tmp_path_factory.getbasetemp() / "caffe-seed"))
    assert_contained(child.read("caffemodel", {"net.caffemodel": data.draw(mutated(caffemodel))}))


@FUZZ
@given(st.data())
def test_index_and_sidecar(child, data):
    vectors, sidecar = index_seeds()
    files = {"i.npy": data.draw(mutated(vectors)), "i.json": data.draw(mutated(sidecar))}
    assert_contained(child.read("index", files))


@FUZZ
@given(st.data())
def test_label_files(child, data):
    name, seed = data.draw(st.sampled_from([("labels.csv", LABEL_CSV), ("labels.jsonl", LABEL_JSONL)]))
    files = {name: data.draw(mutated(seed)), "0.png": _image_bytes("PNG", (5, 5)), "1.png": _image_bytes("PNG", (5, 5))}
    if data.draw(st.booleans()):
        files["classes.txt"] = data.draw(mutated(CLASSES_TXT))
    assert_contained(child.read("source", files))


@FUZZ
@given(st.data())
def test_shards_and_their_index(child, tmp_path_factory, data):
    shard, index = shard_seed(str(tmp_path_factory.getbasetemp() / "shard-seed"))
    files = {"data-000000.tar": data.draw(mutated(shard))}
    if data.draw(st.booleans()):
        files["data-000000.tar.idx.json"] = data.draw(mutated(index))
    assert_contained(child.read("source", files))


# -- shrunk failures that make fuzz found, kept as plain tests ---------------------------------------

def test_found_npy_header_cut_inside_its_dict(tmp_path):
    """A header whose dict lost its opening characters: numpy's tokenizer raised TokenError."""
    from resnets import ResnetsError
    from resnets.textparse import load_npy

    header = b"\x00\x00\x00escr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" + b" " * 58 + b"\n"
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 48)
    with pytest.raises(ResnetsError, match="not a NumPy .npy file"):
        load_npy(path, "x.npy")


# The start of the shrunk shard: an LZMA-alone header (properties 0, a 2 GiB dictionary, 6.4 MB unpacked)
LZMA_ALONE_2GIB = b"\x00" + struct.pack("<I", 0x80000000) + struct.pack("<Q", 0x670000) + b"\0" * 1024


# Found by make fuzz: tarfile.is_tarfile's LZMA probe allocated the header's declared 2 GiB
# dictionary (a MemoryError under the child's RLIMIT_AS); data/cifar.py now tells tars by their bytes.
def test_found_a_shard_that_looks_like_lzma_is_no_memory_error(child):
    assert_contained_strictly(child.read("source", {"data-000000.tar": LZMA_ALONE_2GIB}))


# Found by make fuzz: Path.is_file() raised OSError(ENAMETOOLONG) for a row naming a 400-digit file.
def test_found_a_label_row_with_a_name_too_long_is_a_resnets_error(child):
    rows = b"path,labels\n" + b"9" * 400 + b".png,cat\n"
    assert_contained_strictly(child.read("source", {"labels.csv": rows}))


def assert_contained_strictly(answer: dict) -> None:
    assert answer["outcome"] in ("ok", "ResnetsError"), f"{answer['outcome']}\n{answer['detail']}"


# Found by make fuzz: a 248-byte 16-bit TIFF whose header says 9 x 3,538,951 pixels (32 M, inside
# the decode budget; PIL fills the rows its one strip lacks). Its resize to 256 on the shorter side
# would be 100 M pixels tall and was refused, but only after the decode, whose int64 16-to-8-bit
# conversion grew memory by 620 MB. The resize is now checked from the header, before decoding.
TALL_16_BIT_TIFF = bytes.fromhex(
    "49492a0008000000090000010400010000000900000001010400010000000700360002010300010000001000000003"
    "010300010000000100000006010300010000000100000011010400010000007a000000160104000100000007000000"
    "17010400010000007e0000001c0103000100000001000000000000007e00d4006700cd00ba009a007d005c009c0074"
    "001a009f0070006e0081009800a8007600790096005c00b500ba002800c0004800b1004200d3009e007d00dd009400"
    "a3007a006e003f00ce0081009d00bd00d00067003000d000860070004b003b00bb00c900a40050005e00a800550027"
    "007f00bf006400ad00a5004400")


def test_found_a_tall_tiff_is_refused_before_its_decode(child):
    answer = child.read("image", {"x.tif": TALL_16_BIT_TIFF})
    assert answer["outcome"] == "ResnetsError" and "would become 256x100663495" in answer["detail"], answer
    assert answer["grew_mb"] < 50, answer  # nothing decoded


# Found by make fuzz: a weights record asking for groups=3 on BasicBlocks; building the model's
# shapes raised the block's ValueError as a traceback. A record the blocks refuse is one line now.
def test_found_a_weights_record_with_groups_on_basic_blocks_is_a_resnets_error(child):
    seed = weights_seed()
    assert b'\\"groups\\": 1' in seed
    answer = child.read("weights", {"w.safetensors": seed.replace(b'\\"groups\\": 1', b'\\"groups\\": 3', 1)})
    assert answer["outcome"] == "ResnetsError" and "cannot be built" in answer["detail"], answer
