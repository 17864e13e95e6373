"""Fast inference: a frozen, eval-mode copy of a model tuned for one runtime.

:func:`optimize_for_inference` never touches the model it is given: it deep-copies it, switches
the copy to eval mode, folds every BatchNorm into the convolution before it (a conv followed by
an affine map is one conv with rescaled weights and a bias), stores weights channels-last
(oneDNN's fast layout on CPU, tensor cores' on GPU) and runs it under ``torch.inference_mode``.
Backends then differ in who executes the folded graph:

- ``eager``: PyTorch itself. Exact (fp32) and no warm-up.
- ``compile``: ``torch.compile`` (inductor) with weight freezing. Exact to ~1e-5; the first call
  compiles (tens of seconds on a small CPU).
- ``onnxruntime``: exported to ONNX (:func:`resnets.export.export_onnx`) and run by an ONNX
  Runtime session using PyTorch's thread count, on a graph whose input shape is pinned to the
  size it runs at (:func:`pin_input_shape`: height and width static, batch left dynamic; a call
  at another height and width builds a session for that size once). Needs the ``onnx`` extra.
- ``int8``: ONNX Runtime static post-training quantization (QDQ, per-channel weights),
  calibrated on ``calibration_data``. Not exact: measure its accuracy on your data.
- ``openvino``: the same pinned ONNX graph compiled by Intel's OpenVINO for the CPU (latency hint,
  fp32 pinned: OpenVINO would otherwise pick bf16 on CPUs that have it). Needs the
  ``openvino`` extra.
- ``openvino-int8``: OpenVINO with NNCF's post-training quantization (per-channel int8
  weights, bias correction), calibrated on ``calibration_data``. Not exact.
- ``auto`` (the default): the fastest of the exact backends installed (``onnxruntime``,
  ``openvino``, ``eager``), chosen by a short timed probe (:func:`probe_backends`) at the input
  shape and batch of ``example_input``. Given the number of ``images`` to run, it first asks
  whether an export and probe would pay back (:func:`worth_probing`), and runs eager if not. The
  choice is cached per (model fingerprint, input shape, batch, machine): in memory, and on disk
  in ``$XDG_CACHE_HOME/resnets`` (default ``~/.cache/resnets``; ``RESNETS_BACKEND_CACHE`` names
  another file, or ``off``). The module returned says what was chosen and why in ``auto_probe``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .errors import ResnetsError, first_line
from .export import ONNX_INPUT, export_onnx
from .fileio import atomic_write_text, open_regular
from .models import get_model_spec
from .openvino import OpenVinoModule
from .textparse import load_json
from .timing import time_interleaved
from .weights.onnx import OnnxModel, checked_session

BACKENDS: tuple[str, ...] = ("eager", "compile", "onnxruntime", "int8", "openvino", "openvino-int8")
INT8_BACKENDS = ("int8", "openvino-int8")
DEFAULT_BACKEND = "auto"
# ``auto``'s candidates, where installed: exact (fp32) and ready without compiling for minutes
# (``compile`` is as fast once warm, but compiles for about a minute per input shape on 2 cores).
AUTO_CANDIDATES: tuple[str, ...] = ("onnxruntime", "openvino", "eager")
# Below this many images (and with no remembered probe to say better), ``auto`` with a known
# image count runs eager: exporting ResNet-50, building its session and probing costs about
# 5 s on 2 cores, and saves about 15 ms an image (benchmarks/RESULTS.md).
AUTO_MIN_IMAGES = 256
PROBE_WARMUP, PROBE_RUNS = 0, 3  # untimed, then timed rounds (a turn: a call, then a timed call)
CACHE_ENV = "RESNETS_BACKEND_CACHE"  # a file for auto's choices, or "off"
CACHE_FILE = "inference-backends.json"
CACHE_MAX_BYTES = 1 << 20
CACHE_MAX_ENTRIES = 256
_CHOICES: dict[str, dict] = {}  # auto's choices made or read in this process, by probe key


def check_backend(backend: str) -> str:
    """``backend`` if known and installed (``auto`` always is); a one-line ResnetsError if not."""
    if backend == "auto":
        return backend
    if backend not in BACKENDS:
        raise ResnetsError(f"unknown inference backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    if backend in ("onnxruntime", "int8") and not onnxruntime_available():
        raise ResnetsError(f"backend {backend!r} needs onnxruntime: pip install 'resnets[onnx]'")
    if backend.startswith("openvino") and not openvino_available(backend == "openvino-int8"):
        raise ResnetsError(f"backend {backend!r} needs OpenVINO{' and NNCF' if 'int8' in backend else ''}: "
                           f"pip install 'resnets[openvino]'")
    return backend


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def openvino_available(with_nncf: bool = False) -> bool:
    names = ("openvino", "onnx") + (("nncf",) if with_nncf else ())
    return all(importlib.util.find_spec(name) is not None for name in names)


def auto_candidates(device: torch.device | str = "cpu") -> list[str]:
    """The backends ``auto`` chooses among: the installed exact ones (only eager off the CPU)."""
    if torch.device(device).type != "cpu":
        return ["eager"]
    available = {"onnxruntime": onnxruntime_available(), "openvino": openvino_available(), "eager": True}
    return [name for name in AUTO_CANDIDATES if available[name]]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm that follows a conv folded into it.

    BatchNorms not fed by a single-use convolution (pre-activation nets' norms) are kept.
    The result is a ``torch.fx.GraphModule`` computing the same function in eval mode.
    """
    from torch.fx.experimental.optimization import fuse

    frozen = copy.deepcopy(model).eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    try:
        return fuse(frozen, inplace=True)
    except Exception as error:  # noqa: BLE001 - fx cannot trace data-dependent control flow
        raise ResnetsError(f"cannot fold BatchNorm: {type(model).__name__} is not fx-traceable "
                           f"({type(error).__name__}: {first_line(error)})") from error


class InferenceModule(nn.Module):
    """A frozen model run under ``torch.inference_mode`` with channels-last inputs."""

    def __init__(self, model: nn.Module, backend: str) -> None:
        super().__init__()
        self.model = model
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.model(x.contiguous(memory_format=torch.channels_last))


def pin_input_shape(graph: bytes, image_shape: Sequence[int], batch: int | None = None) -> bytes:
    """The ONNX ``graph`` with its input's (C, H, W) fixed to ``image_shape`` (and its batch to
    ``batch`` unless None), intermediate shapes inferred anew.

    The graph :func:`resnets.export.export_onnx` writes with dynamic axes has the same nodes as
    one traced at a fixed shape (checked for our nets and torchvision's); what a fixed shape adds
    is that the runtime knows every size when it plans its kernels, which this gives it.
    """
    import onnx

    model = onnx.load_from_string(graph)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, [batch, *image_shape]):
        if size is None:
            continue
        dim.Clear()
        dim.dim_value = int(size)
    if batch is not None:
        output = model.graph.output[0].type.tensor_type.shape.dim[0]
        output.Clear()
        output.dim_value = int(batch)
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session behind a module interface: tensors in, tensors out.

    Each input height and width gets its own session, on the graph pinned to that size
    (:func:`pin_input_shape`), built at its first call; the batch stays dynamic.
    """

    def __init__(self, onnx_path: str | os.PathLike, backend: str, example: Tensor | None = None) -> None:
        super().__init__()
        self.graph = Path(onnx_path).read_bytes()
        self.backend = backend
        self.sessions: dict[tuple[int, ...], object] = {}
        if example is not None:
            self.session_for(tuple(example.shape[1:]))  # built now, not at the caller's first timed call

    def session_for(self, image_shape: tuple[int, ...]):
        """The session for inputs of ``image_shape`` (C, H, W), built on first use."""
        session = self.sessions.get(image_shape)
        if session is None:
            session = checked_session(pin_input_shape(self.graph, image_shape), "the ONNX graph")
            self.sessions[image_shape] = session
        return session

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().cpu().contiguous().float().numpy()
        session = self.session_for(tuple(array.shape[1:]))
        (logits,) = session.run(None, {ONNX_INPUT: array})
        return torch.from_numpy(logits)


def optimize_for_inference(model: nn.Module, backend: str = DEFAULT_BACKEND,
                           example_input: Tensor | None = None,
                           calibration_data: Tensor | Iterable[Tensor] | None = None,
                           images: int | None = None) -> nn.Module:
    """A fast, eval-mode copy of ``model``; the model itself stays trainable and unchanged.

    Args:
        model: any fx-traceable image model (ours or torchvision's), or the
            :class:`~resnets.weights.onnx.OnnxModel` of an ONNX file (its graph runs in
            onnxruntime or OpenVINO only: ``eager`` and ``compile`` refuse it).
        backend: ``auto`` (the fastest exact one installed, by a cached timed probe),
            ``eager``, ``compile``, ``onnxruntime``, ``int8``, ``openvino``, ``openvino-int8``
            (see the module doc).
        example_input: an input batch at the shape the model will run at: the ONNX backends
            pin the graph's height and width to it, ``auto`` probes at its shape and batch,
            ``compile`` warms up on it. Defaults to one image of the model's input size.
        calibration_data: int8 backends only, required: a tensor of images or an iterable of
            batches from the training distribution (a few hundred images is enough).
        images: ``auto`` only: how many images the caller will run (None: unbounded, a
            server). Too few to pay back an export and a probe, and ``auto`` runs the model as
            it is (eager; an ONNX file in onnxruntime) without them: see :func:`worth_probing`.

    The module returned names its backend in ``backend``; ``auto``'s also holds the choice and
    the probe's median milliseconds per candidate in ``auto_probe``.
    """
    backend = check_backend(backend)
    if backend in INT8_BACKENDS and calibration_data is None:
        raise ResnetsError(f"backend {backend!r} needs calibration_data: a few hundred representative images")
    example = example_input if example_input is not None else _default_input(model)
    if isinstance(model, OnnxModel):
        return _onnx_file_module(model, backend, example, calibration_data, images)
    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    if backend == "auto":
        return _auto_module(folded, example, images)
    if backend == "eager":
        return InferenceModule(folded, backend)
    if backend == "compile":
        module = InferenceModule(torch.compile(folded, options={"freezing": True}), backend)
        module(example)  # compile now, not at the caller's first timed call
        return module
    with tempfile.TemporaryDirectory(prefix="resnets-ort-") as workdir:
        onnx_path = Path(workdir) / "model.onnx"
        export_onnx(folded, onnx_path, example, check=False)
        return _onnx_module(onnx_path, backend, example, calibration_data)


def _default_input(model: nn.Module) -> Tensor:
    name = getattr(model, "model_name", None)
    preprocessing = getattr(model, "preprocessing", None)
    size = preprocessing.input_size if isinstance(model, OnnxModel) else \
        get_model_spec(name).input_size if name is not None else 224
    return torch.randn(1, getattr(model, "in_chans", 3), size, size)


def _onnx_module(onnx_path: Path, backend: str, example: Tensor,
                 calibration_data: Tensor | Iterable[Tensor] | None = None) -> nn.Module:
    """The ONNX-run module of ``backend`` on the graph at ``onnx_path`` (exported from the folded model)."""
    if backend.startswith("openvino"):
        batches = _calibration_batches(calibration_data) if backend == "openvino-int8" else None
        pinned = onnx_path.with_name(f"{onnx_path.stem}.pinned.onnx")
        pinned.write_bytes(pin_input_shape(onnx_path.read_bytes(), example.shape[1:]))
        return OpenVinoModule(pinned, backend, example, batches)
    if backend == "int8":
        fp32_path, onnx_path = onnx_path, onnx_path.with_name(f"{onnx_path.stem}.int8.onnx")
        quantize_onnx_int8(fp32_path, onnx_path, _calibration_batches(calibration_data))
    return OnnxRuntimeModule(onnx_path, backend, example)


def _onnx_file_module(model: OnnxModel, backend: str, example: Tensor,
                      calibration_data: Tensor | Iterable[Tensor] | None, images: int | None) -> nn.Module:
    """An ONNX file's graph through ``backend``: an ONNX runtime (``auto``: the faster one)."""
    if backend in ("eager", "compile"):
        raise ResnetsError(f"{model.source} is an ONNX file: it runs in onnxruntime or OpenVINO, not backend "
                           f"{backend!r} (give its weights file for {backend})")
    if example.device.type != "cpu":
        raise ResnetsError(f"{model.source} is an ONNX file, which runs on the CPU here; use --device cpu")
    with tempfile.TemporaryDirectory(prefix="resnets-onnx-") as workdir:
        onnx_path = Path(workdir) / "model.onnx"
        onnx_path.write_bytes(model.onnx_graph)
        if backend == "auto":
            return _auto_module(model, example, images, onnx_path)
        return _onnx_module(onnx_path, backend, example, calibration_data)


# -- auto: the fastest exact backend, by a timed probe ------------------------------------------
def _auto_module(model: nn.Module, example: Tensor, images: int | None = None,
                 onnx_file: Path | None = None) -> nn.Module:
    """The fastest of the candidates for ``model`` (folded; or an ONNX file's, whose graph is
    at ``onnx_file``) at ``example``'s shape: remembered (this process, then the disk cache) or
    probed now and remembered; or, for too few ``images``, the candidate that needs no export
    and no probe (:func:`worth_probing`)."""
    candidates = auto_candidates(example.device) if onnx_file is None else onnx_candidates()
    plain = candidates[-1] if onnx_file is None else candidates[0]  # runs without export and probe
    key = probe_key(model, example, candidates)
    choice, source = _CHOICES.get(key), "memory"
    if choice is None or choice["backend"] not in candidates:
        choice, source = read_cached_choice(key, candidates), "disk"
    if choice is None and len(candidates) == 1:  # nothing to choose from (off the CPU, or eager alone)
        choice, source = {"backend": candidates[0], "probe_ms": {}}, "only candidate"
    worth, why = worth_probing(choice, plain, images, example.shape[0])
    if not worth:
        choice, source = {"backend": plain, "probe_ms": (choice or {}).get("probe_ms", {})}, why
    needed = candidates if choice is None else [choice["backend"]]
    modules, setup_ms = _build_candidates(model, example, needed, onnx_file)
    if choice is None:
        probe_ms = probe_backends(modules, example)
        choice, source = {"backend": min(probe_ms, key=probe_ms.get), "probe_ms": probe_ms,
                          "setup_ms": setup_ms}, "probe"
        write_cached_choice(key, choice)
    module = modules[choice["backend"]]
    if worth:
        _CHOICES[key] = choice
    module.auto_probe = {**choice, "source": source, "candidates": candidates}
    return module


def onnx_candidates() -> list[str]:
    """The runtimes ``auto`` chooses among for an ONNX file: the installed ones of onnxruntime, OpenVINO."""
    candidates = [name for name, available in (("onnxruntime", onnxruntime_available()),
                                               ("openvino", openvino_available())) if available]
    if not candidates:
        raise ResnetsError("running an ONNX file needs onnxruntime: pip install 'resnets[onnx]'")
    return candidates


def _build_candidates(model: nn.Module, example: Tensor, names: Sequence[str],
                      onnx_file: Path | None) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """The modules of ``names`` and what each cost to build in milliseconds (an ONNX backend's
    share: the export, once, and its own session): what ``auto`` weighs against the images."""
    modules: dict[str, nn.Module] = {}
    setup_ms: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="resnets-auto-") as workdir:
        onnx_path, export_ms = onnx_file, 0.0
        if onnx_path is None and any(name != "eager" for name in names):
            onnx_path, start = Path(workdir) / "model.onnx", time.perf_counter()
            export_onnx(model, onnx_path, example, check=False)
            export_ms = 1e3 * (time.perf_counter() - start)
        for name in names:
            start = time.perf_counter()
            modules[name] = InferenceModule(model, name) if name == "eager" else _onnx_module(onnx_path, name, example)
            setup_ms[name] = round(1e3 * (time.perf_counter() - start) + (export_ms if name != "eager" else 0), 1)
    return modules, setup_ms


def worth_probing(choice: dict | None, plain: str, images: int | None, batch: int = 1) -> tuple[bool, str]:
    """Whether ``auto`` should export and probe (or use its remembered choice) for ``images``
    images, rather than run ``plain`` (eager; an ONNX file's onnxruntime), which costs nothing
    to set up; and why not, in words.

    The rule: with a remembered probe that measured both, the export pays when the images times
    the milliseconds it saves per image (the probe's, at ``batch`` images a call) exceed what
    it cost to set up; with none (or one from before setup times were kept), when there are at
    least ``AUTO_MIN_IMAGES``. ``images`` None (a server, a benchmark): always.
    """
    if images is None or (choice is not None and choice["backend"] == plain):
        return True, ""
    probe_ms, setup_ms = (choice or {}).get("probe_ms", {}), (choice or {}).get("setup_ms", {})
    best = (choice or {}).get("backend")
    if best in setup_ms and best in probe_ms and plain in probe_ms:
        saved_ms = images * (probe_ms[plain] - probe_ms[best]) / max(1, batch)
        cost_ms = setup_ms[best] - setup_ms.get(plain, 0.0)
        if saved_ms > cost_ms:
            return True, ""
        return False, (f"{plain}: {images} image(s) would save {saved_ms / 1e3:.2f} s through {best}, "
                       f"less than its {cost_ms / 1e3:.2f} s setup")
    if images >= AUTO_MIN_IMAGES:
        return True, ""
    return False, f"{plain}: {images} image(s), fewer than the {AUTO_MIN_IMAGES} an export and probe pay back"


def probe_backends(modules: dict[str, Callable[[Tensor], Tensor]], example: Tensor,
                   warmup: int = PROBE_WARMUP, runs: int = PROBE_RUNS) -> dict[str, float]:
    """Median milliseconds of a call of each module on ``example``, in rounds (one turn of each
    per round, so that load from elsewhere slows them alike). A turn is an untimed call, then
    the timed one: a runtime's threads still spinning after its call (PyTorch's OpenMP threads)
    slow the next call, which is then another runtime's; the untimed call takes that cost, and
    the timed one sees the module as it runs in use, called after itself."""
    runners = {name: (lambda module=module: module(example)) for name, module in modules.items()}
    with torch.inference_mode():
        times = time_interleaved(runners, runs, warmup, settle=True)
    return {name: round(1e3 * statistics.median(seconds), 3) for name, seconds in times.items()}


def model_fingerprint(model: nn.Module) -> str:
    """What makes two models equally fast: their code and the names, shapes and types of their
    tensors (not the values: a fine-tuned copy runs as fast as its start)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    digest.update(str(getattr(model, "code", repr(model))).encode())
    if isinstance(model, OnnxModel):  # its graph is its code
        digest.update(hashlib.sha256(model.onnx_graph).digest())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()


def machine_fingerprint() -> dict:
    """This machine and the software that runs the backends, as far as it changes their speed."""
    versions = {}
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"node": platform.node(), "machine": platform.machine(), "cpu": _cpu_name(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), **versions}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def probe_key(model: nn.Module, example: Tensor, candidates: Sequence[str]) -> str:
    """The key of auto's choice: model fingerprint, input shape with batch, candidates, machine."""
    record = {"model": model_fingerprint(model), "input": list(example.shape), "device": str(example.device),
              "candidates": list(candidates), "machine": machine_fingerprint()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def backend_cache_path() -> Path | None:
    """The file of auto's remembered choices: ``$RESNETS_BACKEND_CACHE`` (``off``: none), else
    ``$XDG_CACHE_HOME/resnets``, else ``~/.cache/resnets``."""
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() in ("off", "0", "none", "false"):
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "resnets" / CACHE_FILE


def _read_cache_entries(path: Path) -> dict[str, dict]:
    """The entries of the cache file (none if it is missing); a ResnetsError if it is unusable."""
    try:
        with open_regular(path) as handle:
            data = handle.read(CACHE_MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet
        return {}
    document = load_json(data, str(path), max_bytes=CACHE_MAX_BYTES)
    if not isinstance(document, dict) or document.get("version") != 1 \
            or not isinstance(document.get("entries"), dict):
        raise ResnetsError(f"{path}: not a resnets backend cache (version 1 with entries)")
    return document["entries"]


def _valid_choice(entry: object, candidates: Sequence[str]) -> dict | None:
    """``entry`` as a choice if it is one among ``candidates`` with its probe's timings."""
    if not isinstance(entry, dict) or entry.get("backend") not in candidates:
        return None
    probe_ms, setup_ms = entry.get("probe_ms"), entry.get("setup_ms", {})
    if not _timings(probe_ms) or not _timings(setup_ms):
        return None
    return {"backend": entry["backend"], "probe_ms": {name: float(ms) for name, ms in probe_ms.items()},
            "setup_ms": {name: float(ms) for name, ms in setup_ms.items()}}


def _timings(value: object) -> bool:
    """Whether ``value`` is a {name: milliseconds} record (finite, not negative)."""
    return isinstance(value, dict) and all(isinstance(name, str) and type(ms) in (int, float) and 0 <= ms < 1e12
                                           for name, ms in value.items())


def read_cached_choice(key: str, candidates: Sequence[str]) -> dict | None:
    """auto's choice remembered on disk under ``key``, or None: a file that cannot be read or
    holds nonsense is one warning line and a new probe (the next write replaces it)."""
    path = backend_cache_path()
    if path is None:
        return None
    try:
        return _valid_choice(_read_cache_entries(path).get(key), candidates)
    except (OSError, ResnetsError) as error:
        warnings.warn(f"ignoring the inference backend cache ({first_line(error)}); probing again",
                      stacklevel=4)
        return None


def write_cached_choice(key: str, choice: dict) -> None:
    """Remember ``choice`` on disk (atomically: a temporary file, then a rename). A cache that
    cannot be written is skipped without a word (a read-only home is no error): the next run
    probes again."""
    path = backend_cache_path()
    if path is None:
        return
    try:
        try:
            entries = _read_cache_entries(path)
        except ResnetsError:
            entries = {}  # unusable: replaced by this one
        entries.pop(key, None)
        entries[key] = choice
        kept = dict(list(entries.items())[-CACHE_MAX_ENTRIES:])
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or (path.exists() and not path.is_file() and not path.is_dir()):
            path.unlink()  # a link, FIFO or device here: the name goes, not what it points to (the
            # atomic write would first copy what is there as its backup: /dev/zero without end)
        atomic_write_text(path, json.dumps({"version": 1, "entries": kept}, indent=1) + "\n")
    except (OSError, ResnetsError):
        pass


def _calibration_batches(data: Tensor | Iterable[Tensor] | None) -> list[Tensor]:
    if isinstance(data, Tensor):
        return list(data.split(32))
    batches = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in data or ()]
    if not batches:
        raise ResnetsError("calibration_data is empty: give a few hundred representative images")
    return batches


def quantize_onnx_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                       batches: Sequence[Tensor]) -> None:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on ``batches``.

    ``reduce_range`` keeps weights to 7 bits: x86 CPUs without VNNI multiply u8 x s8 pairs with
    a saturating 16-bit add, which 8-bit weights can overflow.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {ONNX_INPUT: batch.contiguous().float().numpy()}

    quantize_static(str(fp32_path), str(int8_path), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
