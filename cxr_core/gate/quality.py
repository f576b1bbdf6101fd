"""Image-quality gate: is this input good enough (and plausible enough) to classify?

`assess(image) -> QualityReport` measures a few cheap, deterministic signals and compares
them with thresholds calibrated on the cxr3 TRAIN split:

============== ====================================================== ==================
metric         what it is                                             thresholds
============== ====================================================== ==================
contrast       std of intensities (working image, [0, 1])             calibrated, 2-sided
dynamic_range  1st-99th percentile spread of intensities              calibrated, low
brightness     mean intensity                                         calibrated, 2-sided
sharpness      variance of the Laplacian of the contrast-stretched    calibrated, 2-sided
               224 x 224 working image (low = blurred, high = noise)
dark_clipped   fraction of pixels at pure black (<= 2/255)            calibrated, high
bright_clipped fraction of pixels at pure white (>= 253/255)          calibrated, high
colourfulness  mean chroma of the source (image.meta.colourfulness)   fixed, high
aspect_ratio   width / height of the original                         fixed, 2-sided
min_side       shorter side of the original in pixels                 fixed, low
============== ====================================================== ==================

Plausibility (`check_plausibility=True`, the default): `cxr_core.ood.is_chest_xray` scores the
image with frozen ImageNet MobileNetV2 features against statistics of real CXRs (weights/ood.npz)
and colourfulness; an implausible image FAILS with the first reason "This does not look like a
frontal chest X-ray (...)" and `QualityReport.plausibility` holds the score (1.0 = threshold).
Without weights/ood.npz the check is skipped. The training-data filter passes False (metrics only).

The paper filtered its training images by contrast (dropping very high and very low contrast);
the same gate is used here as the training-data filter (drop `fail`) and in the app (a `fail`
makes the app abstain, a `warn` is shown next to the result).

Calibration (`python -m cxr_core.quality calibrate`): warn outside the 1st-99th percentile of
the train split; fail outside the 0.1th-99.9th percentile widened by a margin (x0.75 / x1.25,
x0.5 / x2 for sharpness). The thresholds live in `settings.QUALITY_THRESHOLDS` (JSON); when that
file is missing, conservative built-in values are used. See docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal

import cv2
import numpy as np

from cxr_core import settings
from cxr_core.io import CXRImage, ImageLoadError, ImageMeta, check_each, load_image

Verdict = Literal["pass", "warn", "fail"]

WORKING_SIZE: int = 224  # cxr3's native size: metrics are computed at this fixed size
THRESHOLDS_VERSION: int = 1
CALIBRATED_METRICS: tuple[str, ...] = (
    "contrast",
    "dynamic_range",
    "brightness",
    "sharpness",
    "dark_clipped",
    "bright_clipped",
)
# Metrics checked only on the high side (a fraction of clipped pixels cannot be "too low").
HIGH_ONLY: frozenset[str] = frozenset({"dark_clipped", "bright_clipped"})
# ...and only on the low side (using the full grey range is not a defect; harshness is `contrast`).
LOW_ONLY: frozenset[str] = frozenset({"dynamic_range"})
# Fail bounds = 0.1th / 99.9th percentile scaled by these factors (per metric, low/high).
FAIL_MARGINS: dict[str, tuple[float, float]] = {
    "contrast": (0.75, 1.25),
    "dynamic_range": (0.75, 1.25),
    "brightness": (0.75, 1.25),
    "sharpness": (0.5, 2.0),
    "dark_clipped": (1.0, 1.25),
    "bright_clipped": (1.0, 1.25),
}
# Domain limits: a fail bound at or beyond these can never trigger, so it is dropped.
DOMAIN: dict[str, tuple[float, float]] = {
    "contrast": (0.0, 0.5),
    "dynamic_range": (0.0, 1.0),
    "brightness": (0.0, 1.0),
    "sharpness": (0.0, math.inf),
    "dark_clipped": (0.0, 1.0),
    "bright_clipped": (0.0, 1.0),
}

# Fixed plausibility limits (not calibrated: every cxr3 image is a square 224 px greyscale JPEG).
FIXED_THRESHOLDS: dict[str, dict[str, float]] = {
    # Mean chroma in [0, 1]. Greyscale re-encodes score ~0; a tinted film scan ~0.02-0.06;
    # colour photographs and heavily annotated screenshots 0.1 and more.
    "colourfulness": {"warn_high": 0.03, "fail_high": 0.12},
    # PA/AP chest films are between about 0.75 and 1.3 (w/h).
    "aspect_ratio": {"warn_low": 0.6, "warn_high": 1.67, "fail_low": 0.33, "fail_high": 3.0},
    # Below the models' input size the image must be upsampled; below MIN_IMAGE_SIDE io refuses it.
    "min_side": {"warn_low": float(settings.BASELINE_SIZE), "fail_low": float(settings.MIN_IMAGE_SIDE)},
}

# Conservative built-in values used when the calibrated JSON is missing: wide enough that
# only clearly unusable images fail (calibrated values, see docs/quality.md, are tighter).
FALLBACK_THRESHOLDS: dict[str, dict[str, float]] = {
    "contrast": {"warn_low": 0.10, "warn_high": 0.35, "fail_low": 0.05, "fail_high": 0.49},
    "dynamic_range": {"warn_low": 0.40, "fail_low": 0.22},
    "brightness": {"warn_low": 0.25, "warn_high": 0.75, "fail_low": 0.12, "fail_high": 0.95},
    "sharpness": {"warn_low": 40.0, "warn_high": 800.0, "fail_low": 10.0, "fail_high": 3000.0},
    "dark_clipped": {"warn_high": 0.30, "fail_high": 0.70},
    "bright_clipped": {"warn_high": 0.10, "fail_high": 0.30},
}


@dataclass(frozen=True)
class QualityReport:
    """The gate's verdict, the plain-language reasons behind it and the raw metrics."""

    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    failed: tuple[str, ...] = ()  # metric names outside the fail bounds
    warned: tuple[str, ...] = ()  # metric names outside the warn (but inside the fail) bounds
    # Out-of-distribution score from cxr_core.ood (1.0 = rejection threshold, higher = less like a
    # chest X-ray); None when the plausibility check was skipped or is unavailable (no weights/ood.npz).
    plausibility: float | None = None
    # What cxr_core.gate.orientation read (rotation, mirrored, inverted and their probabilities);
    # None when the check was skipped or its weights are missing. The app offers the correction.
    orientation: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.verdict != "fail"

    def summary(self) -> str:
        if not self.reasons:
            return "Image quality looks adequate."
        return " ".join(self.reasons)


# --- metrics ---------------------------------------------------------------------------------


def compute_metrics(image: CXRImage | np.ndarray) -> dict[str, float]:
    """All quality metrics of one image (deterministic; ~1 ms for a 224 px image)."""
    pixels, meta = _unpack(image)
    h, w = pixels.shape
    interp = cv2.INTER_AREA if max(h, w) > WORKING_SIZE else cv2.INTER_LINEAR
    work = cv2.resize(pixels, (WORKING_SIZE, WORKING_SIZE), interpolation=interp)
    u8 = np.clip(work * 255.0 + 0.5, 0, 255).astype(np.uint8)
    hist = np.bincount(u8.ravel(), minlength=256).astype(np.float64)
    n = hist.sum()
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean = float((hist * levels).sum() / n)
    std = float(math.sqrt(max((hist * (levels - mean) ** 2).sum() / n, 0.0)))
    cdf = np.cumsum(hist) / n
    p1 = float(np.searchsorted(cdf, 0.01)) / 255.0
    p99 = float(np.searchsorted(cdf, 0.99)) / 255.0
    # Sharpness on the contrast-stretched image, so that blur and contrast are measured apart.
    if p99 - p1 >= 2.0 / 255.0:
        stretched = np.clip((work - p1) / (p99 - p1), 0.0, 1.0) * 255.0
    else:
        stretched = np.zeros_like(work)
    lap = cv2.Laplacian(stretched.astype(np.float32), cv2.CV_32F, ksize=1)
    orig_w, orig_h = meta.original_size if meta is not None else (w, h)
    return {
        "contrast": std,
        "dynamic_range": p99 - p1,
        "brightness": mean,
        "sharpness": float(lap.astype(np.float64).var()),
        "dark_clipped": float(hist[:3].sum() / n),
        "bright_clipped": float(hist[253:].sum() / n),
        "colourfulness": float(meta.colourfulness) if meta is not None else 0.0,
        "aspect_ratio": float(orig_w) / float(max(orig_h, 1)),
        "min_side": float(min(orig_w, orig_h)),
    }


def _unpack(image: CXRImage | np.ndarray) -> tuple[np.ndarray, ImageMeta | None]:
    if isinstance(image, CXRImage):
        pixels, meta = image.pixels, image.meta
    else:
        pixels, meta = np.asarray(image), None
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"expected a 2-D greyscale image, got shape {pixels.shape}")
    pixels = np.asarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all():
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(pixels), meta


# --- thresholds --------------------------------------------------------------------------------


def default_thresholds() -> dict[str, dict[str, float]]:
    return {**{k: dict(v) for k, v in FALLBACK_THRESHOLDS.items()}, **{k: dict(v) for k, v in FIXED_THRESHOLDS.items()}}


def load_thresholds(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Calibrated thresholds from JSON (settings.QUALITY_THRESHOLDS by default), falling back to
    the built-in conservative values for the file or any metric that is missing."""
    path = Path(path) if path is not None else Path(settings.QUALITY_THRESHOLDS)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = None
    return _load_thresholds_cached(str(path), mtime)


@lru_cache(maxsize=8)
def _load_thresholds_cached(path: str, mtime: int | None) -> dict[str, dict[str, float]]:
    thresholds = default_thresholds()
    if mtime is None:
        return thresholds
    try:
        data = json.loads(Path(path).read_text())
        calibrated = data["thresholds"]
    except (OSError, ValueError, KeyError, TypeError):
        return thresholds
    for metric, bounds in calibrated.items():
        if isinstance(bounds, dict):
            thresholds[metric] = {k: float(v) for k, v in bounds.items() if k in _BOUND_KEYS and v is not None}
    return thresholds


_BOUND_KEYS = ("warn_low", "warn_high", "fail_low", "fail_high")


def thresholds_source(path: str | Path | None = None) -> str:
    path = Path(path) if path is not None else Path(settings.QUALITY_THRESHOLDS)
    return str(path) if path.is_file() else "built-in fallback values"


# --- assessment ------------------------------------------------------------------------------


def assess(
    image: CXRImage | np.ndarray,
    thresholds: dict[str, dict[str, float]] | str | Path | None = None,
    *,
    check_plausibility: bool = True,
) -> QualityReport:
    """Quality verdict for one image: `fail` (do not classify / drop from training),
    `warn` (usable, but tell the user why it is unusual) or `pass`.

    With `check_plausibility` (default) the image must also look like a chest X-ray to the
    out-of-distribution check of `cxr_core.ood` (frozen MobileNetV2 features, ~50-200 ms on CPU,
    model loaded once per process); otherwise it fails with "This does not look like a frontal
    chest X-ray (...)". The check is skipped when weights/ood.npz or the ImageNet backbone is
    missing. The same flag runs the orientation check (`cxr_core.gate.orientation`, a ~90 k-parameter
    CNN, ~1 ms): a rotated or inverted film fails with a reason naming it, a mirrored one warns.
    The training-data filter passes False to stay fast (a few ms per image)."""
    if not isinstance(thresholds, dict):
        thresholds = load_thresholds(thresholds)
    metrics = compute_metrics(image)
    failed: list[tuple[str, str]] = []
    warned: list[tuple[str, str]] = []
    for metric, value in metrics.items():
        bounds = thresholds.get(metric)
        if not bounds:
            continue
        if "fail_low" in bounds and value < bounds["fail_low"]:
            failed.append((metric, "low"))
        elif "fail_high" in bounds and value > bounds["fail_high"]:
            failed.append((metric, "high"))
        elif "warn_low" in bounds and value < bounds["warn_low"]:
            warned.append((metric, "low"))
        elif "warn_high" in bounds and value > bounds["warn_high"]:
            warned.append((metric, "high"))
    header = _header_scope(image.meta if isinstance(image, CXRImage) else None)
    header_failed = [(n, r) for n, r, fails in header if fails]
    header_warned = [(n, r + " (warning)") for n, r, fails in header if not fails]
    # failures before warnings, the header's before the pixel metrics'
    reasons = [r for _, r in header_failed] + [_reason(m, d, metrics, thresholds[m], True) for m, d in failed]
    reasons += [r for _, r in header_warned] + [_reason(m, d, metrics, thresholds[m], False) for m, d in warned]
    failed_names = [n for n, _ in header_failed] + [m for m, _ in failed]
    warned_names = [n for n, _ in header_warned] + [m for m, _ in warned]
    score = orient = None
    if check_plausibility:
        found = _orientation(image)
        o_fail, o_warn = found.reasons() if found is not None else ([], [])
        plausible = _plausibility(image)
        if plausible is not None and not plausible[0]:
            # Not like a chest film as it is. Turned the way the orientation check says, is it one? Then it
            # is a chest film the wrong way round; otherwise the orientation reading means nothing.
            if not (o_fail and (_plausibility(_undo(image, found)) or (False,))[0]):
                found, o_fail, o_warn = None, [], []
                reasons.insert(0, f"This does not look like a frontal chest X-ray ({plausible[2]}).")
                failed_names.insert(0, PLAUSIBILITY)
        if plausible is not None:
            score = plausible[1]
        if found is not None:
            orient = found.to_dict()
            reasons[:0] = o_fail  # a film the wrong way round: said before any pixel metric
            failed_names[:0] = [ORIENTATION] * bool(o_fail)
            reasons += o_warn
            warned_names += [ORIENTATION] * bool(o_warn)
    verdict: Verdict = "fail" if failed_names else ("warn" if warned_names else "pass")
    return QualityReport(
        verdict=verdict,
        reasons=reasons,
        metrics=metrics,
        failed=tuple(failed_names),
        warned=tuple(warned_names),
        plausibility=score,
        orientation=orient,
    )


PLAUSIBILITY = "chest_xray_plausibility"  # name used in QualityReport.failed for the OOD check
ORIENTATION = "orientation"  # rotated / inverted (failed) or mirrored (warned), cxr_core.gate.orientation


def _undo(image: CXRImage | np.ndarray, found: Any) -> CXRImage | np.ndarray:
    """The film turned the way the orientation check says it should be (mirroring left as it is)."""
    from dataclasses import replace

    from cxr_core.gate import orientation

    pixels = image.pixels if isinstance(image, CXRImage) else np.asarray(image, dtype=np.float32)
    fixed = orientation.undo(pixels, found.k, False, found.inverted)
    return replace(image, pixels=fixed) if isinstance(image, CXRImage) else fixed


def _model_check(module: str, check: str, image: CXRImage | np.ndarray) -> Any:
    """`cxr_core.gate.<module>.<check>(image)`, or None when its weights are missing or it cannot run.

    A failure of a learnt check must never make a readable image unusable, so any error (also a
    minimal install without torch) skips it; logged at DEBUG without image content or identifiers."""
    try:
        import importlib

        mod = importlib.import_module(f"cxr_core.gate.{module}")
        if not mod.available():
            return None
        return getattr(mod, check)(image)
    except Exception as exc:
        import logging

        logging.getLogger(__name__).debug("%s check skipped: %s", module, type(exc).__name__)
        return None


def _orientation(image: CXRImage | np.ndarray) -> Any:
    """cxr_core.gate.orientation.check, or None when it cannot run."""
    return _model_check("orientation", "check", image)


def _header_scope(meta: ImageMeta | None) -> list[tuple[str, str, bool]]:
    """(check name, reason, fails) for what a DICOM header says about scope. A CT slice or a lateral
    film can pass every pixel check; the header is the cheapest place to catch it. A body part other
    than the chest only warns: that tag is often filled in by protocol, not by what was imaged."""
    if meta is None:
        return []
    out = []
    modality = (meta.modality or "").strip().upper()
    if modality in settings.NON_RADIOGRAPH_MODALITIES:
        out.append(("dicom_modality", f"The DICOM header says modality {modality}: the models read chest "
                    "radiographs (CR/DX) only.", True))
    view = (meta.view_position or "").strip().upper()
    if view in settings.NON_FRONTAL_VIEWS:
        out.append(("dicom_view", f"The DICOM header says view {view} (lateral or oblique): the models read "
                    "frontal (PA/AP) films only.", True))
    part = (meta.body_part or "").strip().upper()
    if part and not any(p in part for p in settings.CHEST_BODY_PARTS):
        out.append(("dicom_body_part", f"The DICOM header says body part {part}, not the chest.", False))
    return out


def _plausibility(image: CXRImage | np.ndarray) -> tuple[bool, float, str] | None:
    """cxr_core.gate.ood.is_chest_xray (ok, score, why), or None when it cannot run."""
    return _model_check("ood", "is_chest_xray", image)


_TEXT: dict[tuple[str, str], str] = {
    ("contrast", "low"): "Very low contrast: the image looks flat or washed out",
    ("contrast", "high"): "Unusually harsh contrast (mostly pure black and white), as in an "
    "over-processed image or a photo of a screen",
    ("dynamic_range", "low"): "Very narrow range of grey levels: the image looks flat or washed out",
    ("brightness", "low"): "The image is very dark overall (under-exposed or wrongly windowed)",
    ("brightness", "high"): "The image is very bright overall (over-exposed, or possibly inverted)",
    ("sharpness", "low"): "The image looks blurred (few sharp edges)",
    ("sharpness", "high"): "The image is unusually noisy or grainy (or is not a radiograph)",
    ("dark_clipped", "high"): "A large part of the image is pure black (clipped shadows, "
    "under-exposure or wide black borders)",
    ("bright_clipped", "high"): "A large part of the image is pure white (burnt-out / over-exposed)",
    ("colourfulness", "high"): "The image is in colour; radiographs are greyscale, so this looks like "
    "a photograph, a colour-mapped image or an annotated screenshot",
    ("aspect_ratio", "low"): "The image is much taller than wide, unlike a chest radiograph "
    "(it may be cropped or a screenshot)",
    ("aspect_ratio", "high"): "The image is much wider than tall, unlike a chest radiograph "
    "(it may contain several images or be a screenshot)",
    ("min_side", "low"): "Low resolution: fine detail may be lost",
}


def _reason(metric: str, direction: str, metrics: dict[str, float], bounds: dict[str, float], fail: bool) -> str:
    value = metrics[metric]
    text = _TEXT.get((metric, direction), f"{metric} is unusually {direction}")
    if direction == "low":
        limit = bounds.get("warn_low", bounds.get("fail_low"))
        cmp = "at least"
    else:
        limit = bounds.get("warn_high", bounds.get("fail_high"))
        cmp = "at most"
    if metric == "min_side":
        detail = f"shorter side {value:.0f} px; the training images have {limit:.0f} px"
    elif metric == "aspect_ratio":
        detail = f"width/height {value:.2f}; expected between {bounds.get('warn_low', 0):.2f} and {bounds.get('warn_high', 0):.2f}"
    elif metric in ("dark_clipped", "bright_clipped"):
        detail = f"{value:.0%} of pixels; typical training images {cmp} {limit:.0%}"
    else:
        detail = f"{metric.replace('_', ' ')} {_fmt(value)}; typical training images {cmp} {_fmt(limit)}"
    severity = "" if fail else " (warning)"
    return f"{text}{severity} [{detail}]."


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


# --- calibration -------------------------------------------------------------------------------


def calibrate(metric_rows: Iterable[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Thresholds from per-image metrics of clean training data: warn outside [p1, p99], fail
    outside [p0.1 x margin_low, p99.9 x margin_high]; bounds outside a metric's domain are dropped."""
    rows = list(metric_rows)
    if len(rows) < 20:
        raise ValueError(f"need at least 20 images to calibrate, got {len(rows)}")
    out: dict[str, dict[str, float]] = {}
    for metric in CALIBRATED_METRICS:
        values = np.array([r[metric] for r in rows], dtype=np.float64)
        q001, q01, q99, q999 = np.percentile(values, [0.1, 1.0, 99.0, 99.9])
        m_lo, m_hi = FAIL_MARGINS[metric]
        d_lo, d_hi = DOMAIN[metric]
        b: dict[str, float] = {}
        if metric in HIGH_ONLY:
            # Clipped fractions: never warn about a handful of pixels; fail at >= 2x the warn level.
            b["warn_high"] = max(float(q99), 0.01)
            fail_high = max(float(q999) * m_hi, 2.0 * b["warn_high"])
            if fail_high < d_hi:
                b["fail_high"] = fail_high
        else:
            b["warn_low"] = float(q01)
            if q001 * m_lo > d_lo:
                b["fail_low"] = float(q001 * m_lo)
            if metric not in LOW_ONLY:
                b["warn_high"] = float(q99)
                if q999 * m_hi < d_hi:
                    b["fail_high"] = float(q999 * m_hi)
        out[metric] = {k: round(v, 6) for k, v in b.items()}
    return out


def _manifest_rows(split: str | None) -> list[dict[str, str]]:
    from cxr_core.data import manifest_rows

    try:
        return manifest_rows(split)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None


def _iter_metrics(rows: list[dict[str, str]], desc: str):
    from tqdm import tqdm

    for row in tqdm(rows, desc=desc, unit="img", file=sys.stderr):
        path = settings.CXR3_DIR / row["path"]
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            yield row, None, str(exc)
            continue
        yield row, image, None


def _quantile_summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    qs = [0.0, 0.1, 1.0, 5.0, 50.0, 95.0, 99.0, 99.9, 100.0]
    out = {}
    for metric in CALIBRATED_METRICS:
        vals = np.percentile([r[metric] for r in rows], qs)
        out[metric] = {f"p{q:g}": round(float(v), 6) for q, v in zip(qs, vals)}
    return out


def cmd_calibrate(args: argparse.Namespace) -> int:
    rows = _manifest_rows(args.split)
    if args.limit:
        rows = rows[: args.limit]
    metric_rows, unreadable = [], []
    for row, image, err in _iter_metrics(rows, f"calibrating on {args.split}"):
        if image is None:
            unreadable.append({"path": row["path"], "error": err})
            continue
        metric_rows.append(compute_metrics(image))
    thresholds = calibrate(metric_rows)
    doc = {
        "version": THRESHOLDS_VERSION,
        "dataset": "cxr3",
        "split": args.split,
        "n_images": len(metric_rows),
        "n_unreadable": len(unreadable),
        "working_size": WORKING_SIZE,
        "rule": "warn outside [p1, p99] of the split; fail outside [p0.1 * m_low, p99.9 * m_high] "
        "(margins per metric in fail_margins); clipped fractions are high-side only with "
        "warn >= 0.01 and fail >= 2 * warn; dynamic_range is low-side only; bounds beyond a "
        "metric's domain are omitted",
        "fail_margins": {k: list(v) for k, v in FAIL_MARGINS.items()},
        "thresholds": thresholds,
        "fixed_thresholds": FIXED_THRESHOLDS,
        "quantiles": _quantile_summary(metric_rows),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    print(f"calibrated on {len(metric_rows)} {args.split} images ({len(unreadable)} unreadable) -> {out}")
    for metric, bounds in thresholds.items():
        print(f"  {metric:15s} " + "  ".join(f"{k}={v:.4g}" for k, v in bounds.items()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    rows = _manifest_rows(args.split)
    if args.limit:
        rows = rows[: args.limit]
    thresholds = load_thresholds(args.thresholds)
    counts: dict[str, dict[str, int]] = {}
    reasons: dict[str, dict[str, int]] = {}
    flagged: list[tuple[str, str, str]] = []
    for row, image, err in _iter_metrics(rows, f"assessing {args.split}"):
        label = row.get(args.by, "?") if args.by != "label+source" else f"{row['label']}/{row['source']}"
        c = counts.setdefault(label, {"n": 0, "pass": 0, "warn": 0, "fail": 0, "unreadable": 0})
        c["n"] += 1
        if image is None:
            c["unreadable"] += 1
            flagged.append(("unreadable", row["path"], err or ""))
            continue
        rep = assess(image, thresholds, check_plausibility=not args.skip_plausibility)
        c[rep.verdict] += 1
        for m in rep.failed:
            reasons.setdefault(f"fail:{m}", {}).setdefault(label, 0)
            reasons[f"fail:{m}"][label] += 1
        for m in rep.warned:
            reasons.setdefault(f"warn:{m}", {}).setdefault(label, 0)
            reasons[f"warn:{m}"][label] += 1
        if rep.verdict == "fail":
            flagged.append(("fail", row["path"], ",".join(rep.failed)))
    total = {k: sum(c[k] for c in counts.values()) for k in ("n", "pass", "warn", "fail", "unreadable")}
    print(f"quality gate on cxr3 {args.split} (thresholds: {thresholds_source(args.thresholds)})")
    width = max(18, *(len(k) for k in counts)) if counts else 18
    print(f"{args.by:{width}s} {'n':>6s} {'pass':>6s} {'warn':>6s} {'fail':>6s} {'fail%':>7s} {'unread':>7s}")
    for label in sorted(counts) + ["all"]:
        c = total if label == "all" else counts[label]
        pct = 100.0 * c["fail"] / max(c["n"], 1)
        print(f"{label:{width}s} {c['n']:6d} {c['pass']:6d} {c['warn']:6d} {c['fail']:6d} {pct:6.2f}% {c['unreadable']:7d}")
    if reasons:
        print(f"\nreasons (images per {args.by}; an image can have several):")
        labels = sorted(counts)
        for key in sorted(reasons):
            per = ", ".join(f"{lab}={reasons[key].get(lab, 0)}" for lab in labels)
            print(f"  {key:24s} {per}")
    if flagged and args.list:
        print("\nfailed / unreadable images:")
        for kind, path, why in flagged:
            print(f"  {kind:10s} {path}  {why}")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "reasons": reasons, "flagged": flagged}, indent=2) + "\n")
    return 0


def cmd_check(args: argparse.Namespace) -> int:

    def judge(p: object, image: CXRImage) -> bool:
        rep = assess(image, args.thresholds, check_plausibility=not args.skip_plausibility)
        print(f"{p}: {rep.verdict.upper()}  " + " ".join(f"{k}={_fmt(v)}" for k, v in rep.metrics.items()))
        for r in rep.reasons:
            print(f"    - {r}")
        return rep.verdict != "fail"

    return check_each(args.files, judge)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_core.quality", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("calibrate", help="compute thresholds from a cxr3 split and write them as JSON")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "all"])
    p.add_argument("--out", default=str(settings.QUALITY_THRESHOLDS))
    p.add_argument("--limit", type=int, default=0, help="only the first N images (for smoke tests)")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("report", help="how many images per class the gate fails / warns")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "all"])
    p.add_argument("--thresholds", default=None, help="JSON file (default: settings.QUALITY_THRESHOLDS)")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list failed images")
    p.add_argument("--by", default="label", choices=["label", "source", "age_group", "label+source"],
                   help="group the counts by this manifest column (default: label = class)")
    p.add_argument("--json", default=None, help="also write the counts to this JSON file")
    p.add_argument("--skip-plausibility", action="store_true",
                   help="skip the chest X-ray plausibility (OOD) check: metrics only, much faster")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("check", help="assess image files and print the verdict")
    p.add_argument("files", nargs="+")
    p.add_argument("--thresholds", default=None)
    p.add_argument("--skip-plausibility", action="store_true", help="skip the chest X-ray plausibility check")
    p.set_defaults(func=cmd_check)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
