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

Sanity checks after Adebayo et al. (2018), "Sanity Checks for Saliency Maps":
``python -m cxr_core.explain sanity --n 30 --model NAME`` writes weights/explain_sanity_NAME.json
(``--method M`` other than Grad-CAM: explain_sanity_NAME_M.json):
(a) the Spearman rank correlation between heatmaps of the trained network and the same
architecture with random weights (low = the map depends on what the model learned) and
(b) a deletion curve: deleting the most salient pixels first should lower the predicted-class
probability faster than deleting random pixels (smaller area under the curve).
"""

from __future__ import annotations

import argparse
import contextlib
import io as _io
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
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
from cxr_core.preprocess import Box, standardise, to_model_tensor

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
    target: str  # class name (settings.CLASSES) the map explains
    model: str  # classifier name
    target_index: int = 0
    probability: float = float("nan")  # calibrated probability of `target` on this input
    predicted: str = ""  # the model's top class on this input
    box: Box | None = None  # crop (x0, y0, x1, y1) the model saw, None = whole image
    lung_fraction: float | None = None  # share of the saliency mass inside the lung mask (before masking)

    @property
    def method_label(self) -> str:
        return METHODS[self.method][1]

    @property
    def target_label(self) -> str:
        return settings.CLASS_LABELS.get(self.target, self.target)

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


def _resolve_target(target: str | int | None) -> int | None:
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        idx = int(target)
        if not 0 <= idx < len(settings.CLASSES):
            raise ValueError(f"Target index {idx} is out of range 0..{len(settings.CLASSES) - 1}.")
        return idx
    if isinstance(target, str):
        if target in settings.CLASSES:
            return settings.CLASSES.index(target)
        by_label = {v.lower(): k for k, v in settings.CLASS_LABELS.items()}
        if target.lower() in by_label:
            return settings.CLASSES.index(by_label[target.lower()])
        raise ValueError(f"Unknown target class '{target}'. Known: {', '.join(settings.CLASSES)}")
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


def effective_box(shape: tuple[int, int], box: Box | None) -> Box | None:
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


def to_original(square_map: np.ndarray, shape: tuple[int, int], box: Box | None = None) -> np.ndarray:
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
    box: Box | None = None,
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
    tidx = _resolve_target(target)
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
        target=settings.CLASSES[tidx],
        model=clf.name,
        target_index=tidx,
        probability=float(probs[tidx]),
        predicted=settings.CLASSES[pred],
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


# --- sanity checks (Adebayo et al. 2018) ---------------------------------------------------------


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant map has no ranking
    return float(spearmanr(a, b).statistic)


def randomised_copy(clf: Classifier, seed: int = settings.SEED) -> Classifier:
    """Same architecture and input handling, freshly initialised weights (model randomisation test)."""
    from cxr_core.models import build_model

    torch.manual_seed(seed)
    net, _ = build_model(clf.name, input_size=clf.input_size, imagenet=False)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Classifier(name=clf.name, spec=clf.spec, model=net, input_size=clf.input_size, temperature=1.0)


def deletion_curve(
    clf: Classifier,
    std_image: np.ndarray,
    saliency: np.ndarray,
    target_index: int,
    steps: int = 20,
    rng: np.random.Generator | None = None,
    blur_sigma: float | None = None,
    patch: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deletion curves on one standardised (S, S) uint8 input.

    Pixels are replaced by a heavily blurred copy of the image, most salient first, and (for the
    control) in random order. Returns (fractions, p_salient, p_random): the calibrated
    probability of `target_index` after deleting each fraction of pixels. With `patch` (pixels),
    a second control deletes whole patch x patch squares in random order and is returned as a
    4th array: scattered single pixels are an easier, out-of-distribution perturbation than the
    contiguous blobs a smooth CAM deletes, so random patches are the like-for-like control.
    """
    rng = rng or np.random.default_rng(settings.SEED)
    s = std_image.shape[0]
    sigma = blur_sigma if blur_sigma is not None else s / 16.0
    blurred = cv2.GaussianBlur(std_image, (0, 0), sigmaX=sigma)
    n = std_image.size
    # Ties (flat regions of the upsampled map, zeros after ReLU) are broken at random.
    order_sal = np.lexsort((rng.random(n), -saliency.ravel()))
    order_rnd = rng.permutation(n)
    order_patch = None
    if patch:
        s_p = -(-s // patch)
        patch_rank = rng.permutation(s_p * s_p).reshape(s_p, s_p)
        per_pixel = np.kron(patch_rank, np.ones((patch, patch)))[:s, : std_image.shape[1]]
        order_patch = np.lexsort((rng.random(n), per_pixel.ravel()))
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.rint(fractions * n).astype(int)

    def batch(order: np.ndarray) -> np.ndarray:
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        rank = rank.reshape(std_image.shape)
        return np.stack([np.where(rank < k, blurred, std_image) for k in counts])

    orders = [order_sal, order_rnd] + ([order_patch] if order_patch is not None else [])
    both = np.concatenate([batch(o) for o in orders])
    with torch.inference_mode():
        logits = clf.model(to_model_tensor(both, clf.family))
        probs = torch.softmax(logits.float() / float(clf.temperature), dim=-1)[:, target_index].numpy()
    k = steps + 1
    if order_patch is not None:
        return fractions, probs[:k], probs[k : 2 * k], probs[2 * k :]
    return fractions, probs[:k], probs[k : 2 * k]


def _auc(fractions: np.ndarray, values: np.ndarray) -> float:
    return float(np.trapezoid(values, fractions))


def _sample_test_images(n: int, seed: int, split: str = "test") -> list[tuple[Path, str]]:
    import csv

    if not settings.CXR3_MANIFEST.is_file():
        raise FileNotFoundError(f"cxr3 manifest not found at {settings.CXR3_MANIFEST}")
    with open(settings.CXR3_MANIFEST, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in sorted(rows, key=lambda r: r["path"]):
        by_label.setdefault(r["label"], []).append(r)
    rng = np.random.default_rng(seed)
    for lst in by_label.values():
        rng.shuffle(lst)
    picked: list[tuple[Path, str]] = []
    i = 0
    while len(picked) < n and any(i < len(v) for v in by_label.values()):  # round-robin over classes
        for label in sorted(by_label):
            if i < len(by_label[label]) and len(picked) < n:
                picked.append((settings.CXR3_DIR / by_label[label][i]["path"], label))
        i += 1
    return picked


def run_sanity(
    n: int = 30,
    model: str = settings.DEFAULT_CLASSIFIER,
    method: str = DEFAULT_METHOD,
    steps: int = 20,
    seed: int = settings.SEED,
    clf: Classifier | None = None,
    progress: bool = False,
    layer: str | None = None,
) -> dict[str, Any]:
    """Model-randomisation (Spearman) and deletion-curve checks on `n` real cxr3 test images.

    `layer` (a module name such as "features.22") checks another CAM layer than the model's default,
    to compare layers on the same images before changing `cam_layer`."""
    from cxr_core.io import load_image

    t0 = time.time()
    clf = clf or load_classifier(model)
    rand = randomised_copy(clf, seed)
    target, target_rand = (_named_layer(c, layer) for c in (clf, rand)) if layer else (None, None)
    rng = np.random.default_rng(seed)
    images = _sample_test_images(n, seed)
    rhos, auc_sal, auc_rnd, curves_sal, curves_rnd, rows = [], [], [], [], [], []
    auc_patch, curves_patch = [], []
    patch = max(4, clf.input_size // 16)
    fractions = None
    for k, (path, label) in enumerate(images):
        img = load_image(path)
        std = standardise(img.pixels, clf.input_size)
        x = to_model_tensor(std[None], clf.family)
        maps, logits = cam_at_input(clf, x, None, method, target)
        pred = int(np.argmax(logits[0]))
        maps_rand, _ = cam_at_input(rand, x, pred, method, target_rand)  # same class, random weights
        rho = _spearman(maps[0], maps_rand[0])
        fractions, p_sal, p_rnd, p_patch = deletion_curve(clf, std, maps[0], pred, steps, rng, patch=patch)
        a_s, a_r, a_p = _auc(fractions, p_sal), _auc(fractions, p_rnd), _auc(fractions, p_patch)
        auc_patch.append(a_p)
        curves_patch.append(p_patch)
        rhos.append(rho)
        auc_sal.append(a_s)
        auc_rnd.append(a_r)
        curves_sal.append(p_sal)
        curves_rnd.append(p_rnd)
        rows.append(
            {
                "path": str(path.relative_to(settings.CXR3_DIR)) if path.is_relative_to(settings.CXR3_DIR) else str(path),
                "label": label,
                "predicted": settings.CLASSES[pred],
                "spearman_trained_vs_random": None if np.isnan(rho) else round(rho, 4),
                "deletion_auc_salient": round(a_s, 4),
                "deletion_auc_random": round(a_r, 4),
                "deletion_auc_random_patches": round(a_p, 4),
            }
        )
        if progress:
            print(f"[{k + 1}/{len(images)}] rho={rho:.3f} auc salient={a_s:.3f} random={a_r:.3f} "
                  f"random patches={a_p:.3f}", file=sys.stderr)
    rho_arr = np.array(rhos, dtype=float)
    finite = rho_arr[np.isfinite(rho_arr)]
    sal, rnd, rpatch = np.array(auc_sal), np.array(auc_rnd), np.array(auc_patch)
    return {
        "model": clf.name,
        "method": method,
        "cam_layer": _layer_name(clf, target),
        "cam_layer_is_default": target is None or target is clf.cam_layer,
        "n_images": len(images),
        "split": "test",
        "seed": seed,
        "randomisation": {
            "description": "Spearman rank correlation between the trained model's heatmap and the heatmap of the "
            "same architecture with freshly initialised weights (same input, same target class). "
            "Adebayo et al. 2018: a faithful method should give low correlation.",
            "spearman_mean": float(finite.mean()) if finite.size else float("nan"),
            "spearman_median": float(np.median(finite)) if finite.size else float("nan"),
            "spearman_abs_mean": float(np.abs(finite).mean()) if finite.size else float("nan"),
            "spearman_std": float(finite.std()) if finite.size else float("nan"),
            "n_constant_maps": int((~np.isfinite(rho_arr)).sum()),
        },
        "deletion": {
            "description": "Predicted-class probability while pixels are replaced by a Gaussian-blurred copy "
            "(sigma = input/16), most salient first vs random pixel order (and vs random order of "
            "patch_px squares); AUC over the deleted fraction 0..1, lower = faster drop.",
            "steps": steps,
            "auc_salient_mean": float(sal.mean()),
            "auc_random_mean": float(rnd.mean()),
            "auc_difference_mean": float((rnd - sal).mean()),
            "images_salient_faster": int((sal < rnd).sum()),
            "patch_px": patch,
            "auc_random_patches_mean": float(rpatch.mean()),
            "images_salient_faster_than_patches": int((sal < rpatch).sum()),
            "fractions": [round(float(f), 4) for f in fractions] if fractions is not None else [],
            "curve_salient_mean": [round(float(v), 4) for v in np.mean(curves_sal, axis=0)],
            "curve_random_mean": [round(float(v), 4) for v in np.mean(curves_rnd, axis=0)],
            "curve_random_patches_mean": [round(float(v), 4) for v in np.mean(curves_patch, axis=0)],
        },
        "passed": {
            "randomisation_spearman_below_0.5": bool(finite.size and finite.mean() < 0.5),
            "deletion_salient_below_random": bool(sal.mean() < rnd.mean()),
        },
        "also": {"deletion_salient_below_random_patches": bool(sal.mean() < rpatch.mean())},
        "images": rows,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def classifier_from_checkpoint(name: str, path: str | Path, input_size: int | None = None) -> Classifier:
    """A frozen Classifier from a training checkpoint (`cache/runs/<run>/best.pt`: a bare state_dict)
    or an exported `weights/<name>.pt`, for checking heatmaps before the weights are exported."""
    from cxr_core.models import SPECS, build_model, load_checkpoint

    ckpt = load_checkpoint(Path(path))
    state = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else ckpt
    size = int(input_size or (ckpt.get("input_size") if isinstance(ckpt, dict) else 0) or SPECS[name].default_size)
    net, _ = build_model(name, input_size=size, imagenet=False)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    temperature = float(ckpt.get("temperature", 1.0)) if isinstance(ckpt, dict) else 1.0
    return Classifier(name=name, spec=SPECS[name], model=net, input_size=size, temperature=temperature)


def _named_layer(clf: Classifier, name: str) -> nn.Module:
    modules = dict(clf.model.named_modules())
    if name not in modules:
        spatial = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        raise ValueError(f"{clf.name} has no layer '{name}'; conv/BN layers: {', '.join(spatial)}")
    return modules[name]


def _layer_name(clf: Classifier, layer: nn.Module | None = None) -> str:
    layer = layer if layer is not None else clf.cam_layer
    for name, mod in clf.model.named_modules():
        if mod is layer:
            return f"{name} ({type(mod).__name__})"
    return type(layer).__name__


def sanity_path(model: str, method: str | None = None) -> Path:
    """weights/explain_sanity_MODEL.json for the default method, ..._MODEL_METHOD.json for another one."""
    if method is None or method == DEFAULT_METHOD:
        return settings.WEIGHTS_DIR / f"explain_sanity_{model}.json"
    return settings.WEIGHTS_DIR / f"explain_sanity_{model}_{method}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def sanity_result(model: str, method: str | None = None) -> dict[str, Any] | None:
    """The last sanity run for this model (written by `python -m cxr_core.explain sanity`), if any.

    With `method`, only a run of that method counts (its file's `method` field must say so): a
    Grad-CAM check says nothing about Eigen-CAM maps, so a method never checked gives None.
    """
    if method is None:
        return _read_json(sanity_path(model))
    for path in dict.fromkeys((sanity_path(model, method), sanity_path(model))):
        data = _read_json(path)
        if data is not None and data.get("method") == method:
            return data
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_core.explain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    san = sub.add_parser("sanity", help="model-randomisation and deletion-curve sanity checks")
    san.add_argument("--n", type=int, default=30, help="number of cxr3 test images (class-balanced)")
    san.add_argument("--out", type=Path, default=None, help="default: weights/explain_sanity_<model>.json")
    san.add_argument("--model", default=settings.DEFAULT_CLASSIFIER, choices=settings.CLASSIFIERS)
    san.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    san.add_argument("--steps", type=int, default=20)
    san.add_argument("--seed", type=int, default=settings.SEED)
    san.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    san.add_argument("--checkpoint", type=Path, default=None,
                     help="check a training checkpoint (e.g. cache/runs/vbreathnet-128px/best.pt) instead of weights/<model>.pt")
    san.add_argument("--size", type=int, default=None, help="input size of --checkpoint (if it does not record it)")
    san.add_argument("--layer", default=None, help="CAM layer by module name (e.g. features.22); default: the model's cam_layer")
    img = sub.add_parser("image", help="write a heatmap overlay for one image")
    img.add_argument("image", type=Path)
    img.add_argument("--out", type=Path, required=True)
    img.add_argument("--model", default=settings.DEFAULT_CLASSIFIER, choices=settings.CLASSIFIERS)
    img.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    img.add_argument("--target", default=None, help="class name (default: predicted class)")
    args = parser.parse_args(argv)

    from cxr_core.io import ImageLoadError, load_image
    from cxr_core.models import ModelUnavailableError

    try:
        if args.cmd == "sanity":
            torch.set_num_threads(max(1, args.threads))
            clf = classifier_from_checkpoint(args.model, args.checkpoint, args.size) if args.checkpoint else None
            result = run_sanity(args.n, args.model, args.method, args.steps, args.seed, clf=clf, progress=True,
                                layer=args.layer)
            src = args.checkpoint or (settings.WEIGHTS_DIR / f"{args.model}.pt")
            result["weights_source"] = str(src)
            result["weights_modified"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(Path(src).stat().st_mtime))
            result["input_size"] = (clf or load_classifier(args.model)).input_size
            args.out = args.out or sanity_path(args.model, args.method)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            r, d = result["randomisation"], result["deletion"]
            print(
                f"{result['model']} {result['method']} on {result['n_images']} test images: "
                f"Spearman(trained, random) mean {r['spearman_mean']:.3f}; deletion AUC salient "
                f"{d['auc_salient_mean']:.3f} vs random pixels {d['auc_random_mean']:.3f} / random "
                f"{d['patch_px']}px patches {d['auc_random_patches_mean']:.3f} -> {args.out}"
            )
            return 0 if all(result["passed"].values()) else 1
        image = load_image(args.image)
        heat = explain(args.model, image, args.target, args.method)
        save_overlay(args.out, overlay(image, heat))
        print(json.dumps(heat.to_dict()))
        return 0
    except (ModelUnavailableError, FileNotFoundError, ImageLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
