"""Class-activation heatmaps ("where did the model look?") on top of pytorch-grad-cam.

No CAM maths is written here: every method is a `pytorch_grad_cam` class, always used as a
context manager so its forward hooks are removed even when something fails. This module adds
what the library does not know about our pipeline:

* which layer to explain (`Classifier.cam_layer`, see docs/explain.md for the choice per model);
* gradients through a frozen model: `load_classifier` sets `requires_grad=False` on every
  parameter, so nothing in the graph needs a gradient and the library's gradient hook would
  never fire. Inside `torch.inference_mode(False)` + `torch.enable_grad()` a temporary forward
  hook (removed in `finally`) makes the target layer's output a leaf that requires grad, so
  the backward pass runs only from the logits down to that layer; the cached model is not
  changed (parameters stay frozen, no `.grad` is stored on them, no hook survives the call);
* mapping the map back from the model's square input to the ORIGINAL image, including the
  crop box if the prediction used one, and optional masking by a lung segmentation;
* a per-model lock: hooks live on the (shared, cached) module, so two threads explaining the
  same model at once would read each other's activations (Streamlit serves sessions in threads).

The sanity checks of these maps (model randomisation, deletion curves) are in
`cxr_core.classify.sanity`; their names are also reachable here (`explain.sanity_result`, ...)
because `cxr_core.explain` was one module before the package split and scripts use it.
"""

from __future__ import annotations

import contextlib
import io as _io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import cv2
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cxr_core import settings
from cxr_core.io import CXRImage
from cxr_core.models import Classifier, load_classifier
from cxr_core.preprocess import Region

# name -> (pytorch_grad_cam class, display name). Grad-CAM is the default shown in the app.
METHODS: dict[str, tuple[type, str]] = {
    "gradcam": (GradCAM, "Grad-CAM"),
    "gradcam++": (GradCAMPlusPlus, "Grad-CAM++"),
    "eigencam": (EigenCAM, "Eigen-CAM"),  # gradient-free, class-agnostic (1st principal component)
    "scorecam": (ScoreCAM, "Score-CAM"),  # gradient-free, class-specific, one forward per channel
}
DEFAULT_METHOD = "gradcam"
# Methods whose map does not depend on the chosen target class.
CLASS_AGNOSTIC: frozenset[str] = frozenset({"eigencam"})
SCORECAM_BATCH = 32

_LOCKS: "WeakKeyDictionary[nn.Module, threading.Lock]" = WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class Heatmap:
    """A saliency map at the original image size; `map` is float32 (H, W) in [0, 1]."""

    map: np.ndarray
    method: str  # key of METHODS
    target: str  # class name (one of the classifier's `classes`) the map explains
    model: str  # classifier name
    target_index: int = 0
    probability: float = float("nan")  # calibrated probability of `target` on this input
    predicted: str = ""  # the model's top class on this input
    box: Region | None = None  # crop (x0, y0, x1, y1) the model saw, None = whole image
    lung_fraction: float | None = None  # share of the saliency mass inside the lung mask (before masking)

    @property
    def method_label(self) -> str:
        return METHODS[self.method][1]

    @property
    def target_label(self) -> str:
        return settings.class_label(self.target)

    @property
    def empty(self) -> bool:
        """True when the map is all zero: no positive evidence for `target` at the CAM layer
        (common for a class the model rates very unlikely); the UI should say so, not show nothing."""
        return not bool(np.any(self.map > 0))

    @property
    def class_specific(self) -> bool:
        return self.method not in CLASS_AGNOSTIC

    def to_dict(self) -> dict[str, Any]:
        """Everything but the array, for JSON reports."""
        return {
            "method": self.method,
            "method_label": self.method_label,
            "target": self.target,
            "target_index": self.target_index,
            "probability": self.probability,
            "predicted": self.predicted,
            "model": self.model,
            "box": list(self.box) if self.box is not None else None,
            "lung_fraction": self.lung_fraction,
            "class_specific": self.class_specific,
            "empty": self.empty,
            "shape": list(self.map.shape),
        }


# --- core ---------------------------------------------------------------------------------------


def _lock_for(model: nn.Module) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


def _resolve_target(target: str | int | None, classes: tuple[str, ...] = settings.CLASSES) -> int | None:
    """The output index of `target` (a class name, its display name, or an index) among `classes`,
    the explained classifier's own classes (a retrained model may have other ones than cxr3's)."""
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        idx = int(target)
        if not 0 <= idx < len(classes):
            raise ValueError(f"Target index {idx} is out of range 0..{len(classes) - 1}.")
        return idx
    if isinstance(target, str):
        if target in classes:
            return classes.index(target)
        by_label = {settings.class_label(c).lower(): i for i, c in enumerate(classes)}
        if target.lower() in by_label:
            return by_label[target.lower()]
        raise ValueError(f"Unknown target class '{target}'. Known: {', '.join(classes)}")
    raise TypeError(f"target must be a class name, an index or None, not {type(target).__name__}")


def _activation_leaf(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.detach().requires_grad_(True)


def cam_at_input(
    classifier: Classifier,
    x: torch.Tensor,
    target_index: int | None = None,
    method: str = DEFAULT_METHOD,
    target_layer: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run one pytorch-grad-cam method on a ready model input.

    x: (N, 3, S, S). Returns (maps (N, S, S) float32 in [0, 1], logits (N, C) float32).
    target_index None explains each image's predicted class.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown CAM method '{method}'. Known: {', '.join(METHODS)}")
    cam_cls, _ = METHODS[method]
    model = classifier.model
    layer = target_layer if target_layer is not None else classifier.cam_layer
    uses_grad = method not in {"eigencam", "scorecam"}
    targets = None if target_index is None else [ClassifierOutputTarget(int(target_index))] * x.shape[0]
    was_training = model.training
    handle = None
    maps = logits = None
    with _lock_for(model), torch.inference_mode(False), torch.set_grad_enabled(uses_grad):
        inp = x.detach().clone().float()
        try:
            if uses_grad:
                # The parameters are frozen and the input needs no gradient, so no graph would be
                # built and the library's gradient hook would never fire. This temporary hook
                # (registered BEFORE the library's, so they see its result) turns the target
                # layer's output into a leaf that requires grad: backward then runs only from the
                # logits down to that layer (cheap), and the cached model itself is unchanged.
                handle = layer.register_forward_hook(_activation_leaf)
            with cam_cls(model=model, target_layers=[layer]) as cam:
                if method == "scorecam":
                    cam.batch_size = SCORECAM_BATCH
                    with contextlib.redirect_stderr(_io.StringIO()):  # the library's tqdm bars
                        maps = cam(input_tensor=inp, targets=targets)
                else:
                    maps = cam(input_tensor=inp, targets=targets)
                logits = cam.outputs.detach().float().cpu().numpy()
                cam.outputs = None  # drop the retained graph now rather than at garbage collection
        finally:
            if handle is not None:
                handle.remove()
            model.train(was_training)  # BaseCAM calls model.eval(); restore the caller's mode
    if maps is None or logits is None:  # BaseCAM.__exit__ swallows IndexError (e.g. a bad target index)
        raise RuntimeError(f"{METHODS[method][1]} failed for {classifier.name}; see the message printed above")
    return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0), logits


def effective_box(shape: tuple[int, int], box: Region | None) -> Region | None:
    """The crop `cxr_core.preprocess.crop` really applies for `box` on an image of `shape` (H, W).

    Mirrors its clamping rules: boxes are clipped to the image and a crop smaller than 8 px
    per side is ignored (whole image). None means the whole image was used.
    """
    if box is None:
        return None
    h, w = shape
    x0, y0, x1, y1 = box
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(w, int(x1)), min(h, int(y1))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return None
    return (x0, y0, x1, y1)


def to_original(square_map: np.ndarray, shape: tuple[int, int], box: Region | None = None) -> np.ndarray:
    """Place a (S, S) map from the model input back on the original (H, W) image (inside `box`)."""
    h, w = shape
    eff = effective_box(shape, box)
    if eff is None:
        return np.clip(cv2.resize(square_map, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1).astype(np.float32)
    x0, y0, x1, y1 = eff
    out = np.zeros((h, w), dtype=np.float32)
    out[y0:y1, x0:x1] = cv2.resize(square_map, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


def _apply_lung_mask(heat: np.ndarray, lung_mask: Any) -> tuple[np.ndarray, float | None]:
    # A bool array, or anything with a `.mask` array (cxr_core.lungs.LungMask).
    mask = np.asarray(getattr(lung_mask, "mask", lung_mask))
    if mask.ndim != 2:
        raise ValueError(f"lung_mask must be 2-D (H, W), got shape {mask.shape}")
    mask = mask.astype(bool)
    if mask.shape != heat.shape:  # e.g. a mask computed on a resized copy: nearest keeps it binary
        mask = cv2.resize(mask.astype(np.uint8), heat.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    total = float(heat.sum())
    fraction = float(heat[mask].sum() / total) if total > 0 else None
    return np.where(mask, heat, 0.0).astype(np.float32), fraction


def explain(
    model: Classifier | str,
    image: CXRImage,
    target: str | int | None = None,
    method: str = DEFAULT_METHOD,
    box: Region | None = None,
    lung_mask: Any = None,
) -> Heatmap:
    """Heatmap of what drove `model`'s score for `target` (default: its predicted class).

    `box` must be the crop the prediction used (same as `classify.predict(box=...)`); the map
    then covers only that region of the original image. `lung_mask` (bool H x W, or a
    `cxr_core.segment.LungMask`) zeroes the
    map outside the lungs; `Heatmap.lung_fraction` says how much saliency was inside them.
    Works with frozen, cached classifiers and inside `torch.inference_mode()`.
    """
    clf = load_classifier(model) if isinstance(model, str) else model
    pixels = image.pixels if isinstance(image, CXRImage) else np.asarray(image, dtype=np.float32)
    tidx = _resolve_target(target, clf.classes)
    x = clf.to_input(pixels, box)
    maps, logits = cam_at_input(clf, x, tidx, method)
    probs = torch.softmax(torch.from_numpy(logits[0]) / float(clf.temperature), dim=-1).numpy()
    pred = int(np.argmax(probs))
    tidx = pred if tidx is None else tidx
    heat = to_original(maps[0], pixels.shape[:2], box)
    fraction = None
    if lung_mask is not None:
        heat, fraction = _apply_lung_mask(heat, lung_mask)
    return Heatmap(
        map=heat,
        method=method,
        target=clf.classes[tidx],
        model=clf.name,
        target_index=tidx,
        probability=float(probs[tidx]),
        predicted=clf.classes[pred],
        box=effective_box(pixels.shape[:2], box),
        lung_fraction=fraction,
    )


# --- display ------------------------------------------------------------------------------------


def _colormap_id(name: str) -> int:
    attr = f"COLORMAP_{name.upper()}"
    if not hasattr(cv2, attr):
        known = sorted(a[9:].lower() for a in dir(cv2) if a.startswith("COLORMAP_"))
        raise ValueError(f"Unknown colormap '{name}'. OpenCV colormaps: {', '.join(known)}")
    return int(getattr(cv2, attr))


def _to_rgb_uint8(image: CXRImage | np.ndarray) -> np.ndarray:
    arr = image.pixels if isinstance(image, CXRImage) else np.asarray(image)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if arr.size and float(np.nanmax(arr)) > 1.0 + 1e-6:  # 0-255 floats
            arr = arr / 255.0
        arr = np.rint(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 4:
        return arr[:, :, :3]
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    raise ValueError(f"Cannot display an image of shape {arr.shape}")


def colorize(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) [0, 1] -> RGB uint8 with an OpenCV colormap."""
    u8 = np.rint(np.clip(np.nan_to_num(heat), 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, _colormap_id(colormap)), cv2.COLOR_BGR2RGB)


def overlay(
    image: CXRImage | np.ndarray,
    heatmap: Heatmap | np.ndarray,
    alpha: float = 0.4,
    colormap: str = "jet",
    fade: bool = False,
) -> np.ndarray:
    """The radiograph with the coloured heatmap blended on top: RGB uint8 (H, W, 3).

    `alpha` is the heatmap's weight (0 = image only, 1 = heatmap only). A map of another size
    is resized to the image. With `fade`, weak activations become transparent so the film
    stays readable outside the highlighted regions (the app's viewer uses this).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = _to_rgb_uint8(image)
    heat = heatmap.map if isinstance(heatmap, Heatmap) else np.asarray(heatmap, dtype=np.float32)
    h, w = base.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = colorize(heat, colormap)
    if not fade:
        return np.ascontiguousarray(cv2.addWeighted(base, 1.0 - alpha, colour, alpha, 0.0), dtype=np.uint8)
    a = (alpha * np.clip(np.nan_to_num(heat) * 1.5, 0.0, 1.0))[..., None]
    out = base.astype(np.float32) * (1.0 - a) + colour.astype(np.float32) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image (PNG/JPEG by extension); creates the parent folder."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError("save_overlay expects an RGB (H, W, 3) or grey (H, W) uint8 array")
    Image.fromarray(arr).save(path)
    return path


_SANITY_NAMES = frozenset({
    "randomised_copy", "deletion_curve", "run_sanity", "classifier_from_checkpoint", "sanity_path",
    "sanity_result", "main", "_spearman", "_auc", "_named_layer", "_layer_name",
    "_read_json",
})


def __getattr__(name: str) -> Any:
    """Old names of the sanity study (PEP 562): `explain.run_sanity` etc. resolve to `classify.sanity`.

    Lazy, because `sanity` imports this module; the objects are the same, not copies."""
    if name in _SANITY_NAMES:
        from cxr_core.classify import sanity

        return getattr(sanity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
