"""Image embeddings and similarity search: a trained ResNet as a feature extractor.

:func:`embed_dataset` keeps each image's pooled pre-logit features, L2-normalised, with its path
and label, in an *index file* (Parquet, or ``.npy`` + a ``.json`` sidecar) that records which
model made it (its reference, record and a fingerprint of its weights), so that :func:`search`
embeds queries with that same model and refuses an index whose model has changed.

Search is cosine similarity: inner product of normalised vectors in a FAISS ``IndexFlatIP``
(exact, no training; a few million vectors of 512 floats stay interactive).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .data.collection import is_collection, open_collection
from .data.dataset import ImageDataset
from .data.images import BadImageWarning, SkippedImages, decode_image, read_image_file
from .device import resolve_device
from .errors import ResnetsError, first_line
from .evaluate import evaluation_data
from .explain import check_topk, label_font
from .fileio import atomic_path, atomic_paths, atomic_write_bytes, open_regular, save_figure
from .terminal import printable
from .textparse import load_json, load_npy, read_limited
from .factory import load_model

INDEX_FORMAT = "resnets-embeddings"
INDEX_VERSION = 1
MAX_SIDECAR_BYTES = 256 << 20  # the .npy index's .json: a row (path, label, item) per image
METADATA_KEY = b"resnets"
SUFFIXES = (".parquet", ".npy")
EXTRA_HINT = "pip install 'resnets[search]'"
MIN_MAP_IMAGES = 5


@dataclass
class EmbeddingIndex:
    """Normalised vectors, one row per image, and what made them."""

    vectors: np.ndarray  # (N, D) float32, unit rows
    paths: list[str]
    labels: list[str]
    items: list[int]  # each row's index in the data set (to show the image again)
    meta: dict[str, Any] = field(default_factory=dict)  # format, model, record, fingerprint, data, count

    def __len__(self) -> int:
        return len(self.paths)


def _require(module: str, what: str) -> Any:
    """Import an optional package of the ``search`` extra, or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ResnetsError(f"{what} needs the {module.split('.')[0]} package: {EXTRA_HINT}") from None


# -- the model ----------------------------------------------------------------------------------
def model_reference(reference: str | os.PathLike) -> str:
    """The reference to store: files and run directories made absolute, names kept as given."""
    path = Path(reference)
    return str(path.resolve()) if path.exists() else str(reference)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, shapes and values): a changed model is noticed."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def load_extractor(reference: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The model as :func:`resnets.factory.load_model` resolves it, in eval mode on ``device``."""
    model = load_model(reference).to(resolve_device(device)).eval()
    if not hasattr(model, "forward_features"):
        raise ResnetsError(f"{reference} is not a ResNet with forward_features; it cannot embed images")
    return model


@torch.inference_mode()
def embed_images(model: nn.Module, images_u8: torch.Tensor) -> np.ndarray:
    """uint8 (B, 3, S, S) -> L2-normalised pooled pre-logit features (B, D) float32."""
    device = next(model.parameters()).device
    x = model.preprocessing.normalize(images_u8.to(device))
    features = model.forward_head(model.forward_features(x), pre_logits=True).float()
    return torch.nn.functional.normalize(features, dim=1).cpu().numpy()


# -- embedding a data set -----------------------------------------------------------------------
def embed_dataset(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None,
                  batch_size: int = 64, device: str = "cpu", workers: int = 2,
                  map_png: str | os.PathLike | None = None, progress: bool = True) -> EmbeddingIndex:
    """Embed every image of ``data`` (every split of a data set, or a collection of images without
    classes, whose rows get an empty label) with ``model``, skipping unreadable ones; write the
    index to ``out`` (``.parquet`` or ``.npy``) and a t-SNE map to ``map_png`` when given."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ResnetsError(f"--batch-size must be positive, got {batch_size}")
    if out is not None and check_index_suffix(out) == ".parquet":
        _require("pyarrow", "writing Parquet")
    if map_png is not None:
        _require("sklearn.manifold", "the t-SNE map")
    extractor = load_extractor(model, device)
    dataset = open_images(data)
    vectors, rows = [], []
    started = time.perf_counter()
    bar = tqdm(total=len(dataset), desc="embedding", unit="img", disable=not progress, leave=False)
    with bar, ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            loaded = [(i, image) for i, image in zip(indices, pool.map(
                lambda i: _load_item(dataset, i, extractor.preprocessing), indices)) if image is not None]
            if loaded:
                vectors.append(embed_images(extractor, torch.stack([image for _, image in loaded])))
                rows.extend(i for i, _ in loaded)
            bar.update(len(indices))
    if not rows:
        raise ResnetsError(f"no readable images in {data}")
    labelled = getattr(dataset, "labelled", True)
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "model": model_reference(model),
            "model_name": getattr(extractor, "model_name", None), "fingerprint": fingerprint(extractor),
            "preprocessing": extractor.preprocessing.to_dict(), "data": model_reference(data),
            "data_count": len(dataset), "labelled": labelled, "classes": list(dataset.classes) if labelled else [],
            "dim": int(vectors[0].shape[1]), "seconds": round(time.perf_counter() - started, 2)}
    index = EmbeddingIndex(np.concatenate(vectors), [dataset.item_name(i) for i in rows],
                           [dataset.classes[int(dataset.targets[i])] for i in rows], rows, meta)
    if out is not None:
        save_index(index, out)
    if map_png is not None:
        tsne_map(index, map_png)
    return index


def open_images(data: str | os.PathLike) -> ImageDataset:
    """The images ``embed`` reads at ``data``: every split of a data set with classes, or the
    collection of images without classes (:func:`~resnets.data.collection.open_collection`)."""
    return open_collection([data]) if is_collection(data) else evaluation_data(data, "all")[0].dataset


def _load_item(dataset: Any, index: int, preprocessing: Any) -> torch.Tensor | None:
    """Image ``index`` as the model's uint8 input, or None (with a warning) if unreadable."""
    sample = SkippedImages().item(dataset, index)
    return None if sample is None else preprocessing.to_uint8(sample[0])


# -- the index file -------------------------------------------------------------------------------
def check_index_suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ResnetsError(f"{path}: an index file ends in .parquet or .npy (+ a .json sidecar), not {suffix!r}")
    return suffix


def sidecar(path: str | os.PathLike) -> Path:
    """The JSON beside an ``.npy`` index: ``emb.npy`` -> ``emb.json``."""
    return Path(path).with_suffix(".json")


def save_index(index: EmbeddingIndex, path: str | os.PathLike) -> Path:
    """Write ``index`` as Parquet or ``.npy`` + ``.json`` (by the suffix), atomically."""
    path = Path(path)
    vectors = np.ascontiguousarray(index.vectors, dtype=np.float32)
    if check_index_suffix(path) == ".npy":
        record = {**index.meta, "rows": [{"path": p, "label": label, "item": item}
                                         for p, label, item in zip(index.paths, index.labels, index.items)]}
        with atomic_paths(path, sidecar(path)) as (tmp_npy, tmp_json):
            with open(tmp_npy, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)
            tmp_json.write_text(json.dumps(record) + "\n")
        return path
    pa = _require("pyarrow", "writing Parquet")
    parquet = _require("pyarrow.parquet", "writing Parquet")
    dim = vectors.shape[1]
    table = pa.table({
        "path": pa.array(index.paths, pa.string()),
        "label": pa.array(index.labels, pa.string()),
        "item": pa.array(index.items, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
    }).replace_schema_metadata({METADATA_KEY: json.dumps(index.meta).encode()})
    with atomic_path(path) as tmp:
        parquet.write_table(table, str(tmp))
    return path


def load_index(path: str | os.PathLike) -> EmbeddingIndex:
    """Read an index written by :func:`save_index`; anything else is one clear error."""
    path = Path(path)
    if not path.exists():
        raise ResnetsError(f"no such index file: {path}")
    if check_index_suffix(path) == ".npy":
        meta, rows, vectors = _read_npy(path)
    else:
        meta, rows, vectors = _read_parquet(path)
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise ResnetsError(f"{path} is not an index made by `resnets embed`")
    if meta.get("version") != INDEX_VERSION:
        raise ResnetsError(f"{path} is an index of version {meta.get('version')!r}; this resnets reads "
                           f"version {INDEX_VERSION}: embed again")
    if vectors.ndim != 2 or len(vectors) != len(rows) or not len(rows) or vectors.shape[1] != meta.get("dim") \
            or not np.isfinite(vectors).all():
        raise ResnetsError(f"{path} is damaged: {vectors.shape} vectors for {len(rows)} rows of dimension "
                           f"{meta.get('dim')}")
    try:
        paths = [str(r["path"]) for r in rows]
        labels = [str(r["label"]) for r in rows]
        items = [int(r["item"]) for r in rows]
    except (KeyError, TypeError, ValueError):
        raise ResnetsError(f"{path} is damaged: its rows lack path, label or item") from None
    return EmbeddingIndex(vectors.astype(np.float32, copy=False), paths, labels, items, meta)


def _read_npy(path: Path) -> tuple[Any, list[Any], np.ndarray]:
    """The sidecar's record and rows and the vectors; both files are read as regular files of
    bounded size only (``read_limited``, ``load_npy``): a FIFO, device or folder is refused."""
    side = sidecar(path)
    try:
        record = load_json(read_limited(side, MAX_SIDECAR_BYTES), str(side), max_bytes=MAX_SIDECAR_BYTES)
    except FileNotFoundError:
        raise ResnetsError(f"{path} has no sidecar {side.name}; it is not an index made by `resnets embed`") from None
    vectors = load_npy(path, str(path))  # header checked against the file's size; never unpickles
    rows = record.pop("rows", None) if isinstance(record, dict) else None
    if not isinstance(rows, list):
        raise ResnetsError(f"{path} is not an index made by `resnets embed` ({side.name} has no rows)")
    return record, rows, np.asarray(vectors)


def _read_parquet(path: Path) -> tuple[Any, list[Any], np.ndarray]:
    parquet = _require("pyarrow.parquet", "reading Parquet")
    with open_regular(path) as handle:  # a FIFO or device is refused, never waited on
        try:
            table = parquet.read_table(handle)
            raw = (table.schema.metadata or {}).get(METADATA_KEY)
            meta = load_json(raw, str(path)) if raw else None
        except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError... for a foreign file
            raise ResnetsError(f"{path} is not an index made by `resnets embed` ({first_line(error)})") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise ResnetsError(f"{path} is not an index made by `resnets embed`")
    if not {"path", "label", "item", "embedding"} <= set(table.column_names):
        raise ResnetsError(f"{path} is damaged: it lacks a path, label, item or embedding column")
    column = table.column("embedding").combine_chunks()
    dim = int(meta.get("dim") or 0)
    flat = column.flatten().to_numpy(zero_copy_only=False) if len(column) else np.zeros(0, np.float32)
    if dim < 1 or flat.size != len(column) * dim:
        raise ResnetsError(f"{path} is damaged: embeddings of another size than its dimension {dim}")
    rows = table.select(["path", "label", "item"]).to_pylist()
    return meta, rows, flat.reshape(len(column), dim)


# -- search -------------------------------------------------------------------------------------
def search(index: str | os.PathLike | EmbeddingIndex, queries: Iterable[str | os.PathLike], topk: int = 5,
           device: str = "cpu", out_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The ``topk`` most similar indexed images of each query (an image collection: a missing or
    unreadable one is an error), embedded by the model the index records; ``out_dir``: one PNG
    strip per query. Returns ``[{"query": path, "hits": [{"rank", "path", "label", "score", "item"}]}]``.
    """
    check_topk(topk)
    faiss = _require("faiss", "search")
    index = index if isinstance(index, EmbeddingIndex) else load_index(index)
    queries = [Path(query) for query in queries]
    missing = next((query for query in queries if not query.exists()), None)
    if missing is not None:
        raise ResnetsError(f"no such query image: {printable(str(missing))}")
    collection = open_collection(queries)
    if not len(collection):
        raise ResnetsError("no query image given")
    extractor = load_extractor(index.meta["model"], device)
    if fingerprint(extractor) != index.meta.get("fingerprint"):
        raise ResnetsError(f"the model {index.meta['model']} has changed since this index was made; embed again")
    paths = [collection.item_name(k) for k in range(len(collection))]
    images = [extractor.preprocessing.to_uint8(collection[k][0]) for k in range(len(collection))]  # unreadable: error
    query_vectors = np.concatenate([embed_images(extractor, torch.stack(images[i:i + 64]))
                                    for i in range(0, len(images), 64)])
    flat = faiss.IndexFlatIP(index.vectors.shape[1])
    flat.add(np.ascontiguousarray(index.vectors, dtype=np.float32))
    scores, found = flat.search(np.ascontiguousarray(query_vectors, dtype=np.float32), min(topk, len(index)))
    results = [{"query": path, "hits": [
        {"rank": r + 1, "path": index.paths[i], "label": index.labels[i], "score": round(float(s), 6),
         "item": index.items[i]} for r, (s, i) in enumerate(zip(row_scores, row_ids)) if i >= 0]}
        for path, row_scores, row_ids in zip(paths, scores, found)]
    if out_dir is not None:
        _write_strips(index, results, out_dir, collection)
    return results


def _write_strips(index: EmbeddingIndex, results: list[dict[str, Any]], out_dir: str | os.PathLike,
                  queries: ImageDataset) -> None:
    dataset = _reopen(index)
    used: set[str] = set()
    for k, result in enumerate(results):
        query = Path(result["query"])
        tiles = [(_open_or_none(lambda: queries[k][0]), "query", query.name)]
        tiles += [(_hit_image(dataset, hit), f"#{hit['rank']}  {hit['score']:.3f}",
                   hit["label"] or Path(hit["path"]).name) for hit in result["hits"]]
        name = f"{query.stem or 'query'}.search.png"
        while name in used:
            name = f"{query.stem}-{len(used)}.search.png"
        used.add(name)
        png = Path(out_dir) / name
        atomic_write_bytes(png, strip_png(tiles))
        result["png"] = str(png)


def _reopen(index: EmbeddingIndex) -> Any:
    """The indexed data set, if it is still there as it was (same image count), else None."""
    try:
        with warnings.catch_warnings():  # embed named what it skipped
            warnings.simplefilter("ignore", BadImageWarning)
            dataset = open_images(index.meta["data"])
    except (ResnetsError, OSError, KeyError):
        return None
    return dataset if len(dataset) == index.meta.get("data_count") else None


def _hit_image(dataset: Any, hit: dict[str, Any]) -> Any:
    if dataset is not None and 0 <= hit["item"] < len(dataset):
        return _open_or_none(lambda: dataset[hit["item"]][0])
    return _open_or_none(lambda: decode_image(read_image_file(hit["path"]), hit["path"]))


def _open_or_none(load: Any) -> Any:
    try:
        return load()
    except (ResnetsError, OSError):
        return None


def strip_png(tiles: Sequence[tuple[Any, str, str]], tile: int = 176) -> bytes:
    """A row of square tiles (PIL image or None, first caption line, second line) as PNG bytes."""
    from PIL import Image, ImageDraw, ImageOps

    font_size = 14
    font, caption = label_font(font_size), 2 * int(font_size * 1.35) + 8
    gap = 6
    width = len(tiles) * tile + (len(tiles) + 1) * gap + 10  # extra space after the query
    canvas = Image.new("RGB", (width, tile + caption + 2 * gap), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for k, (image, line1, line2) in enumerate(tiles):
        if image is None:
            draw.rectangle((x, gap, x + tile - 1, gap + tile - 1), fill=(200, 200, 200))
            draw.text((x + 8, gap + tile // 2 - font_size), "(not found)", font=font, fill=(90, 90, 90))
        else:
            canvas.paste(ImageOps.fit(image.convert("RGB"), (tile, tile), Image.Resampling.BICUBIC), (x, gap))
        if k == 0:
            draw.rectangle((x - 3, gap - 3, x + tile + 2, gap + tile + 2), outline=(30, 110, 220), width=3)
        for j, text in enumerate((line1, line2)):
            text = text if draw.textlength(text, font=font) <= tile else _fit(draw, text, font, tile)
            draw.text((x + 2, gap + tile + 4 + j * int(font_size * 1.35)), text, font=font,
                      fill=(30, 110, 220) if k == 0 and j == 0 else (20, 20, 20))
        x += tile + gap + (10 if k == 0 else 0)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


# -- the map ---------------------------------------------------------------------------------------
def tsne_map(index: EmbeddingIndex, path: str | os.PathLike, seed: int = 0) -> Path:
    """A 2-D t-SNE of the embeddings (cosine distance) as a PNG: one colour per class, or, for
    images without labels, per folder (:func:`map_groups`); one colour and no legend for one group."""
    manifold = _require("sklearn.manifold", "the t-SNE map")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(index)
    if count < MIN_MAP_IMAGES:
        raise ResnetsError(f"a t-SNE map needs at least {MIN_MAP_IMAGES} images, the index has {count}")
    perplexity = float(min(30, (count - 1) / 3))
    points = manifold.TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine",
                           random_state=seed).fit_transform(index.vectors)
    groups = map_groups(index)
    classes = sorted(set(groups))
    legend = 1 < len(classes) <= 20
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8.5 if legend else 7, 7))
    labels = np.array(groups)
    for k, name in enumerate(classes):
        chosen = labels == name
        ax.scatter(points[chosen, 0], points[chosen, 1], s=max(8, min(30, 4000 / count)), alpha=0.75,
                   color=cmap(k % cmap.N), label=name if legend else None, linewidths=0)
    if legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    model = index.meta.get("model_name") or Path(str(index.meta.get("model", ""))).name
    ax.set_title(f"t-SNE of {count} embeddings ({model}, {index.vectors.shape[1]}-d)")
    return save_figure(fig, path)


def map_groups(index: EmbeddingIndex) -> list[str]:
    """What colours each point of the map: its label, or for images without labels its folder,
    named from the folder all share (``photos``, ``photos/2023``)."""
    if any(index.labels):
        return list(index.labels)
    folders = [posixpath.dirname(path) for path in index.paths]
    if len(set(folders)) < 2:
        return folders
    try:
        common = posixpath.commonpath(folders)
    except ValueError:  # absolute and relative paths mixed
        return folders
    top = posixpath.dirname(common)
    return [(posixpath.relpath(folder, top) if top else folder) or "." for folder in folders]
