"""The process the fuzz tests read files in: under an address-space limit, one file set per request.

Started by :class:`FuzzChild` (``tests/test_fuzz_readers.py``), it imports every reader, then limits
its own address space (``RLIMIT_AS``: what it has now plus :data:`HEADROOM`), and answers requests
on stdin, one JSON line each: ``{"reader": NAME, "files": {name: base64}}``. The files are written
into a fresh folder and ``READERS[NAME]`` reads the first one; the answer is one JSON line:
``{"outcome": "ok" | "ResnetsError" | <other exception type>, "detail": ..., "grew_mb": ...}``,
``grew_mb`` being how far the peak resident memory rose while reading (reset before each read).
An allocation past the limit is a ``MemoryError`` outcome (a failure); a crash ends the process,
which the test sees as its death. Only the project's own requests are read: JSON, never pickles.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

HEADROOM = 1 << 30  # 1 GiB of address space for a reader, over what the imports took


def _image(path: Path) -> None:
    from resnets.data.images import decode_image, read_image_file
    from resnets.preprocessing import Preprocessing

    preprocessing = Preprocessing()  # predict's and serve's path: the resize checked before the decode
    preprocessing.resize_crop(decode_image(read_image_file(path), path.name, preprocessing.resized_size))


def _npy(path: Path) -> None:
    from resnets.textparse import load_npy

    load_npy(path, path.name)


def _recipe(path: Path) -> None:
    from resnets.train.recipes import read_recipe

    read_recipe(str(path))


def _weights(path: Path) -> None:
    from resnets.weights.format import model_from_weights
    from resnets.weights.load import read_weights

    read_weights(path)
    if path.suffix == ".safetensors":
        model_from_weights(path)


def _caffe(path: Path) -> None:
    from resnets.weights.caffe import from_prototxt

    model = path.with_suffix(".caffemodel")
    from_prototxt(path, model if model.exists() else None)


def _caffemodel(path: Path) -> None:
    from resnets.weights.caffe.caffemodel import read_caffemodel

    read_caffemodel(path)


def _index(path: Path) -> None:
    from resnets.embed import load_index

    load_index(path)


def _source(path: Path) -> None:
    """A data set (label file, shard, LMDB): opened, every split listed, every item read."""
    from resnets.data import open_source

    source = open_source(path)
    for split in source.splits or (None,):
        dataset = source.dataset(split)
        for index in range(min(len(dataset), 64)):
            try:
                dataset[index]
            except ValueError as error:  # BadImageError: a skipped image, as training skips it
                if type(error).__name__ != "BadImageError":
                    raise


READERS = {"image": _image, "npy": _npy, "recipe": _recipe, "weights": _weights, "caffe": _caffe,
           "caffemodel": _caffemodel, "index": _index, "source": _source}


def _reset_peak() -> int:
    """Reset the peak resident size (Linux: ``clear_refs`` 5) and return the current one, in kB."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    return _status_kb("VmHWM")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def answer(request: dict) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        names = list(request["files"])
        for name, data in request["files"].items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(base64.b64decode(data))
        before = _reset_peak()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                READERS[request["reader"]](folder / names[0])
            outcome, detail = "ok", ""
        except Exception as error:  # noqa: BLE001 - which exception came out is the test's question
            from resnets.errors import ResnetsError

            outcome = "ResnetsError" if isinstance(error, ResnetsError) else type(error).__name__
            detail = str(error)[:300] if outcome == "ResnetsError" else traceback.format_exc()[-3000:]
        return {"outcome": outcome, "detail": detail, "grew_mb": (_status_kb("VmHWM") - before) / 1024}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    for name in ("resnets.data", "resnets.embed", "resnets.train.recipes", "resnets.weights.load",
                 "resnets.weights.format", "resnets.weights.caffe", "resnets.weights.caffe.caffemodel", "resnets.preprocessing"):
        __import__(name)
    size = _status_kb("VmSize") * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + HEADROOM, resource.RLIM_INFINITY))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
