"""What a classifier reads: a context-only probe and an acquisition-shift stress test.

In cxr3, COVID-19 is adult and from one database and viral pneumonia is paediatric and from another,
so in-split accuracy rewards reading the hospital or the patient's age. Two probes make that visible:

- **Context only**: the lungs (shipped segmenter mask, dilated) are replaced by the mean grey of the rest
  of the film. A model that has learnt lung disease should fall to chance and stop answering; one that
  still classifies well, or answers confidently, reads what lies outside the lungs.
- **Acquisition shifts**: gamma, contrast, noise, blur, JPEG, down-and-up scaling, border crop, burnt-in
  text and an inverted (negative) film: things that differ between hospitals. The drop per shift says how
  much of the accuracy is tied to one site's acquisition.

Every probe runs on the same 512-px working copy of each film (the models see at most 256 px), so the
"none" row and the shifted rows differ only by the shift. Used by `python -m cxr_core.evaluate --probes`.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cxr_core import settings
from cxr_core.classify import calibrated_probs

WORKING_SIZE = 512  # longest side of the copy every probe sees
LUNG_DILATION = 0.03  # of the image's longest side: covers the lung edge the mask may miss

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def working_copy(pixels: np.ndarray, size: int = WORKING_SIZE) -> np.ndarray:
    """float32 (H, W) in [0, 1], longest side `size` (never enlarged)."""
    h, w = pixels.shape
    scale = size / max(h, w)
    if scale >= 1:
        return pixels.astype(np.float32)
    return cv2.resize(pixels.astype(np.float32), (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def context_only(pixels: np.ndarray, lung_mask: np.ndarray, dilation: float = LUNG_DILATION) -> np.ndarray:
    """The film with its (dilated) lungs replaced by the mean grey of everything else."""
    radius = max(1, round(dilation * max(pixels.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    lungs = cv2.dilate(lung_mask.astype(np.uint8), kernel) > 0
    out = pixels.astype(np.float32).copy()
    out[lungs] = float(out[~lungs].mean()) if (~lungs).any() else 0.5
    return out


def _jpeg(p: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(p * 255), 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0


def _rescale(p: np.ndarray, size: int) -> np.ndarray:
    h, w = p.shape
    small = cv2.resize(p, (max(1, round(w * size / max(h, w))), max(1, round(h * size / max(h, w)))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _border_crop(p: np.ndarray, fraction: float) -> np.ndarray:
    h, w = p.shape
    dy, dx = round(h * fraction), round(w * fraction)
    return p[dy : h - dy, dx : w - dx]


def _text_markers(p: np.ndarray) -> np.ndarray:
    """Burnt-in annotations of the kind scanners add: a side marker, a date line, a bright label."""
    h, w = p.shape
    ink = np.zeros((h, w), np.uint8)  # OpenCV draws text on 8-bit images only
    s = max(h, w) / WORKING_SIZE
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(ink, "R", (round(0.06 * w), round(0.12 * h)), font, 1.6 * s, 255, max(1, round(3 * s)))
    cv2.putText(ink, "PORTABLE AP 12:34", (round(0.45 * w), round(0.06 * h)), font, 0.6 * s, 255, max(1, round(2 * s)))
    cv2.rectangle(ink, (round(0.75 * w), round(0.88 * h)), (round(0.97 * w), round(0.96 * h)), 255, -1)
    return np.where(ink > 0, np.float32(1.0), p)


SHIFTS: dict[str, Shift] = {
    "gamma_0.7": lambda p, _: p**0.7,
    "gamma_1.4": lambda p, _: p**1.4,
    "contrast_+30%": lambda p, _: np.clip((p - p.mean()) * 1.3 + p.mean(), 0, 1),
    "contrast_-30%": lambda p, _: (p - p.mean()) * 0.7 + p.mean(),
    "gaussian_noise_0.03": lambda p, rng: np.clip(p + rng.normal(0, 0.03, p.shape).astype(np.float32), 0, 1),
    "blur_sigma_2": lambda p, _: cv2.GaussianBlur(p, (0, 0), 2.0),
    "jpeg_q30": lambda p, _: _jpeg(p, 30),
    "downscale_128": lambda p, _: _rescale(p, 128),
    "border_crop_5%": lambda p, _: _border_crop(p, 0.05),
    "text_markers": lambda p, _: _text_markers(p),
    "inverted": lambda p, _: 1.0 - p,
}


def _summary(y: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, and the share the app's confidence rule answers with their accuracy (no quality gate:
    the probe asks what the model does when an image reaches it)."""
    from cxr_core.classify.val import abstention_summary

    ab = abstention_summary(y, probs, threshold)
    return {"accuracy": float((probs.argmax(1) == y).mean()), "coverage": ab["coverage"],
            "accuracy_answered": ab["accuracy_answered"], "n": int(len(y))}


def _with_gate(summary: dict[str, Any], y: np.ndarray, probs: np.ndarray, threshold: float,
               passed: np.ndarray) -> dict[str, Any]:
    """Add what the app would answer: the confidence rule AND the quality gate (which fails films)."""
    answered = (probs.max(1) >= threshold) & passed
    summary["gate_failed_share"] = float((~passed).mean()) if len(passed) else float("nan")
    summary["coverage_with_gate"] = float(answered.mean()) if len(answered) else float("nan")
    summary["accuracy_answered_with_gate"] = (float((probs.argmax(1)[answered] == y[answered]).mean())
                                              if answered.any() else float("nan"))
    return summary


def run_probes(clf: Any, images: Sequence[np.ndarray], labels: Sequence[int], threshold: float,
               lung_masks: Sequence[np.ndarray] | None = None, seed: int = settings.SEED,
               gate: Callable[[np.ndarray], bool] | None = None) -> dict[str, Any]:
    """Context-only and shift results for one classifier on working copies of the films.

    `clf` is a loaded classifier (`cxr_core.models.load_classifier`); `lung_masks` are boolean masks at
    the working copies' size (the context-only probe is skipped without them). With `gate` (True =
    the film passes the app's quality gate), the as-is and context-only results also say what share
    the app would answer, gate included: the confidence rule alone answers many lung-less films."""

    y = np.asarray(labels, dtype=int)
    variants: dict[str, list[np.ndarray]] = {"none": list(images)}
    rng = np.random.default_rng(seed)
    for name, shift in SHIFTS.items():
        variants[name] = [np.asarray(shift(p, rng), dtype=np.float32) for p in images]
    if lung_masks is not None:
        variants["context_only"] = [context_only(p, m) for p, m in zip(images, lung_masks)]
    probs: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for name, imgs in tqdm(variants.items(), desc="probes", mininterval=5):
            probs[name] = np.stack([
                calibrated_probs(clf.model(clf.to_input(p))[0], clf.temperature)
                for p in imgs
            ])
    base = _summary(y, probs["none"], threshold)
    passed = {}
    if gate is not None:
        for name in ("none", "context_only"):
            if name in variants:
                passed[name] = np.array([bool(gate(p)) for p in tqdm(variants[name], desc=f"gate {name}", mininterval=5)])
        base = _with_gate(base, y, probs["none"], threshold, passed["none"])
    shifts = {}
    for name in SHIFTS:
        s = _summary(y, probs[name], threshold)
        s["accuracy_drop"] = base["accuracy"] - s["accuracy"]
        s["changed_calls"] = float((probs[name].argmax(1) != probs["none"].argmax(1)).mean())
        shifts[name] = s
    out: dict[str, Any] = {"working_size": WORKING_SIZE, "threshold": threshold, "none": base, "shifts": shifts,
                           "chance_accuracy": float(np.bincount(y).max() / len(y)) if len(y) else float("nan")}
    if "context_only" in probs:
        ctx = _summary(y, probs["context_only"], threshold) | {"lung_dilation": LUNG_DILATION}
        if "context_only" in passed:
            ctx = _with_gate(ctx, y, probs["context_only"], threshold, passed["context_only"])
        out["context_only"] = ctx
    return out
