"""Class-activation maps: where in a photo a model looked for the class it names.

The maps come from the maintained ``grad-cam`` package (``pytorch_grad_cam``); this module
chooses the layer and the target, runs them on the plain eval model (they need gradients, so
never on the inference-optimised copy) and draws the result over the whole photo. The map is of
one class's logit (a softmax would mix in every other class), or of its sigmoid for a
multi-label model, whose classes are independent.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .data.collection import open_collection
from .data.images import BadImageError, to_rgb
from .errors import ResnetsError
from .fileio import atomic_write_bytes, atomic_write_text
from .metrics import probabilities, top_classes
from .multilabel import is_multi_label
from .textparse import shorten

METHODS: dict[str, str] = {  # our name -> the grad-cam class
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}
EXTRA_HINT = "pip install 'resnets[explain]'"
DISPLAY_MIN, DISPLAY_MAX = 384, 768  # the overlay's longer side, in pixels
# grad-cam attaches hooks to the model it is given: one map at a time per process (serve's
# request threads share one model).
_CAM_LOCK = threading.Lock()


@dataclass
class Explanation:
    """One image's map for one class, and what the model predicted for it."""

    cam: np.ndarray  # (S, S) float32 in [0, 1], at the model's input size (the centre crop)
    overlay_png: bytes  # the whole photo with the map over the part the model saw, and the top-k labels
    top: list[dict[str, Any]]  # [{"class", "index", "probability"}], best first
    peak: dict[str, float]  # {"x", "y", "value"} in input pixels; "image_x", "image_y" in the photo's
    target: int  # the class index the map is for
    method: str
    layer: str
    target_class: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no map, no PNG)."""
        return {"method": self.method, "layer": self.layer, "target": self.target,
                "target_class": self.target_class, "top": self.top, "peak": self.peak}


# -- choices ------------------------------------------------------------------------------------
def check_method(method: str) -> str:
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ResnetsError(f"unknown CAM method {method!r}{hint}; choose from {', '.join(METHODS)}")
    return method


def check_topk(topk: int) -> int:
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ResnetsError(f"--topk must be a positive integer, got {topk!r}")
    return topk


def default_layer(model: nn.Module) -> str:
    """The model's own choice (``default_target_layer()``), else its last block-like module."""
    if hasattr(model, "default_target_layer"):
        return model.default_target_layer()
    names = [name for name, module in model.named_modules() if name and isinstance(module, nn.Sequential)]
    if not names:
        raise ResnetsError("the model declares no target layer for CAMs; pass one with --layer")
    return f"{names[-1]}.{len(dict(model.named_modules())[names[-1]]) - 1}"


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called ``name``; a one-line error listing close names if there is none."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    close = difflib.get_close_matches(str(name), [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else \
        f"; e.g. {', '.join(n for n in modules if n and n.count('.') <= 1 and n.startswith('layer'))}"
    raise ResnetsError(f"the model has no layer {name!r}{hint}")


def resolve_target(target: int | str | None, class_names: Sequence[str]) -> int | None:
    """A class given by index (int or digits) or by name -> its index; None stays None."""
    if target is None:
        return None
    if isinstance(target, str) and target in class_names:
        return list(class_names).index(target)
    if isinstance(target, int) or (isinstance(target, str) and target.strip().lstrip("-").isdigit()):
        index = int(target)
        if not 0 <= index < len(class_names):
            raise ResnetsError(f"target class index {index} is out of range 0..{len(class_names) - 1}")
        return index
    close = difflib.get_close_matches(str(target), list(class_names), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f" (the model has {len(class_names)} classes)"
    raise ResnetsError(f"unknown target class {target!r}{hint}")


class SigmoidTarget:
    """A multi-label class's score for grad-cam: its sigmoid probability, taken as ``log sigmoid``.

    The log orders images and masks as the probability does and is the same map up to a
    positive factor for the gradient methods, but its gradient ``sigmoid(-z)`` stays non-zero
    for a confidently present class, where ``sigmoid(z)(1 - sigmoid(z))`` rounds to zero in
    float32 and the map would vanish; ScoreCAM's softmax over masks then weighs each mask by the
    class's probability.
    """

    def __init__(self, category: int):
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.logsigmoid(model_output[..., self.category].double())


def cam_class(method: str) -> type:
    try:
        import pytorch_grad_cam
    except ImportError as error:  # grad-cam itself, or its cv2 / ttach
        raise ResnetsError(f"class-activation maps need the grad-cam package ({error.name or error} is "
                           f"missing): {EXTRA_HINT}") from None
    return getattr(pytorch_grad_cam, METHODS[check_method(method)])


# -- maps ---------------------------------------------------------------------------------------
def class_activation_maps(model: nn.Module, inputs: torch.Tensor, targets: Sequence[int], method: str = "gradcam",
                          layer: str | None = None) -> np.ndarray:
    """Maps (B, H, W) float32 in [0, 1] at the input's size for normalised ``inputs`` (B, 3, H, W).

    ``model`` is a plain eval-mode network (gradients flow through it); its parameters are
    left as they were (no ``.grad`` is allocated: only the input asks for gradients). Each map
    is of its target class's logit, or of its sigmoid for a multi-label model (:class:`SigmoidTarget`).
    """
    maker = cam_class(method)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target_of = SigmoidTarget if is_multi_label(model) else ClassifierOutputTarget

    module = find_layer(model, layer or default_layer(model))
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    with _CAM_LOCK, torch.inference_mode(False), torch.enable_grad():
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            x = inputs.detach().clone().requires_grad_(True)
            maps = None
            with maker(model=model, target_layers=[module]) as cam:
                cam.batch_size = 64  # ScoreCAM's masked copies per forward pass
                maps = cam(input_tensor=x, targets=[target_of(int(t)) for t in targets])
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
            model.train(was_training)
    if maps is None:  # grad-cam's context manager swallows an IndexError (a target past the outputs)
        raise ResnetsError(f"the {method} map of layer {layer!r} failed (is the target class in range?)")
    return np.nan_to_num(np.asarray(maps, dtype=np.float32)).clip(0.0, 1.0)


def peak_of(cam: np.ndarray) -> dict[str, float]:
    """The map's maximum: pixel (x, y) of the input and its value."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return {"x": int(x), "y": int(y), "value": round(float(cam[y, x]), 4)}


def explain_image(predictor: Any, image: Any, method: str = "gradcam", target: int | str | None = None,
                  layer: str | None = None, topk: int = 5) -> "Explanation":
    """Explain one PIL image with ``predictor`` (a :class:`resnets.predict.InferenceModel`): the
    map of ``target`` (index or name; default the top prediction) at ``layer`` from its plain
    model, the top-k from its inference model."""
    check_method(method)
    check_topk(topk)
    plain = predictor.plain
    layer = layer or default_layer(plain)
    find_layer(plain, layer)
    photo = to_rgb(image)
    batch = predictor.normalise(predictor.preprocessing.to_uint8(photo)[None])
    with torch.inference_mode():
        probs = probabilities(predictor.model(batch), multi_label=is_multi_label(plain))
    top = [{**row, "probability": round(row["probability"], 6)}
           for row in top_classes(probs, predictor.class_names, topk)[0]]
    chosen = resolve_target(target, predictor.class_names)
    chosen = top[0]["index"] if chosen is None else chosen
    cam = class_activation_maps(plain, batch, [chosen], method, layer)[0]
    peak = peak_of(cam)
    box = predictor.preprocessing.crop_box(*photo.size)
    scale_x, scale_y = (box[2] - box[0]) / cam.shape[1], (box[3] - box[1]) / cam.shape[0]
    peak["image_x"] = int(np.clip(box[0] + (peak["x"] + 0.5) * scale_x, 0, photo.size[0] - 1))
    peak["image_y"] = int(np.clip(box[1] + (peak["y"] + 0.5) * scale_y, 0, photo.size[1] - 1))
    name = predictor.class_names[chosen]
    png = overlay_png(photo, cam, box, top, name, method, (peak["image_x"], peak["image_y"]))
    return Explanation(cam, png, top, peak, chosen, method, layer, target_class=name)


# -- drawing ------------------------------------------------------------------------------------
def overlay_png(photo: Any, cam: np.ndarray, box: tuple[float, float, float, float], top: list[dict[str, Any]],
                target_class: str, method: str, peak_xy: tuple[int, int]) -> bytes:
    """The photo (its own aspect) with the map over the model's crop, the rest dimmed, and the top-k."""
    from PIL import Image, ImageDraw
    from pytorch_grad_cam.utils.image import show_cam_on_image

    scale = min(max(DISPLAY_MIN / max(photo.size), 1.0), DISPLAY_MAX / max(photo.size)) if max(photo.size) else 1.0
    size = (max(1, round(photo.size[0] * scale)), max(1, round(photo.size[1] * scale)))
    shown = photo.resize(size, Image.Resampling.BICUBIC)
    base = np.asarray(shown, dtype=np.float32) / 255.0
    left, top_, right, bottom = (round(v * scale) for v in box)
    heat = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (max(1, right - left), max(1, bottom - top_)), Image.Resampling.BILINEAR), dtype=np.float32)
    canvas = base * 0.35  # outside the crop: dimmed, the model never saw it
    x0, y0, x1, y1 = max(left, 0), max(top_, 0), min(right, size[0]), min(bottom, size[1])
    if x1 > x0 and y1 > y0:
        region = heat[y0 - top_:y1 - top_, x0 - left:x1 - left].clip(0, 1)
        canvas[y0:y1, x0:x1] = show_cam_on_image(base[y0:y1, x0:x1], region, use_rgb=True,
                                                 image_weight=0.55).astype(np.float32) / 255.0
    out = Image.fromarray((canvas * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(out, "RGBA")
    if (x0, y0, x1, y1) != (0, 0, size[0], size[1]):
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255, 200), width=2)
    px, py = round((peak_xy[0] + 0.5) * scale), round((peak_xy[1] + 0.5) * scale)
    radius = max(5, size[0] // 60)
    draw.ellipse((px - radius, py - radius, px + radius, py + radius), outline=(255, 255, 255, 255), width=3)
    draw.ellipse((px - radius + 3, py - radius + 3, px + radius - 3, py + radius - 3), outline=(0, 0, 0, 255),
                 width=1)
    _label_box(draw, top, target_class, method, size, avoid=(px, py))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _label_box(draw: Any, top: list[dict[str, Any]], target_class: str, method: str, size: tuple[int, int],
               avoid: tuple[int, int]) -> None:
    """The top-k labels in a translucent box at the top left (bottom left if the peak ``avoid`` is
    there); the mapped class marked."""
    font_size = max(12, min(20, size[0] // 32))
    font = label_font(font_size)
    lines = [(f"{'>' if t['class'] == target_class else ' '} {label_text(t['class'])}  {100 * t['probability']:.1f}%",
              t["class"] == target_class) for t in top]
    if target_class not in [t["class"] for t in top]:
        lines.append((f"> {label_text(target_class)} (mapped)", True))
    lines.append((f"{method}", False))
    pad, step = font_size // 2, int(font_size * 1.3)
    width = max(draw.textlength(text, font=font) for text, _ in lines) + 2 * pad
    height = pad * 2 + step * len(lines)
    top_y = size[1] - height if avoid[0] <= width + 8 and avoid[1] <= height + 8 else 0
    draw.rectangle((0, top_y, width, top_y + height), fill=(0, 0, 0, 150))
    for i, (text, marked) in enumerate(lines):
        colour = (255, 230, 80, 255) if marked else (235, 235, 235, 255)
        draw.text((pad, top_y + pad + i * step), text, font=font, fill=colour)


def label_text(name: str, limit: int = 28) -> str:
    """A class name as drawn on an image: at most ``limit`` characters, "…" marking a cut."""
    return shorten(name, limit, ellipsis="…")


def label_font(size: int) -> Any:
    """The font of the labels drawn on images (here and by :func:`resnets.embed.strip_png`): DejaVu
    Sans (shipped with matplotlib) at ``size``; PIL's own font if matplotlib is absent."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default(size)


# -- files ----------------------------------------------------------------------------------------
def explain_files(predictor: Any, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  method: str = "gradcam", target: int | str | None = None, layer: str | None = None,
                  topk: int = 5) -> tuple[list[dict[str, Any]], list[str]]:
    """Explain the images of ``inputs`` (an image collection) into ``out_dir``: one PNG each, and
    the records in ``explanations.json``. Returns (the records, the reasons of unreadable images)."""
    check_method(method)
    check_topk(topk)
    find_layer(predictor.plain, layer or default_layer(predictor.plain))
    resolve_target(target, predictor.class_names)
    collection = open_collection(inputs)
    out = Path(out_dir)
    records, failures, used = [], [], set()
    for index in range(len(collection)):
        name = collection.describe(index)
        try:
            photo = collection[index][0]
        except BadImageError as error:
            failures.append(str(error))
            continue
        explanation = explain_image(predictor, photo, method, target, layer, topk)
        png = out / _unique_name(Path(name), method, used)
        atomic_write_bytes(png, explanation.overlay_png)
        records.append({"path": name, "png": str(png), "width": photo.size[0], "height": photo.size[1],
                        **explanation.to_dict()})
    if records:
        atomic_write_text(out / "explanations.json", json.dumps(records, indent=1) + "\n")
    return records, failures


def _unique_name(path: Path, method: str, used: set[str]) -> str:
    stem = path.stem or "image"
    name, n = f"{stem}.{method}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.{method}.png"
    used.add(name)
    return name
