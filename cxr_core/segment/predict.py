"""Segment one image or a batch -> `LungMask` at the ORIGINAL image size, and the geometry read from a
mask: lung fields, plausibility (is this a frontal chest film?), chest box, outline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from cxr_core import settings
from cxr_core.io import CXRImage
from cxr_core.preprocess import Region
from cxr_core.segment.model import Segmenter, letterbox, load_segmenter, unletterbox


# --- results ----------------------------------------------------------------------------------


@dataclass
class LungMask:
    """Lung segmentation of one image, at the ORIGINAL image size."""

    mask: np.ndarray  # bool (H, W), cleaned of specks
    probability: np.ndarray  # float32 (H, W) in [0, 1]
    n_components: int  # connected lung regions after cleaning
    lung_fraction: float  # mask pixels / image pixels
    plausible: bool  # two lung fields of sensible size and position (see lung_plausibility)
    reason: str = ""  # why plausible / implausible, for the quality check and the UI
    head: str = settings.LUNGSEG_HEAD

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]


def segment(
    image: CXRImage | np.ndarray,
    segmenter: Segmenter | None = None,
    head: str | None = None,
    threshold: float = settings.LUNGSEG_THRESHOLD,
) -> LungMask:
    """Segment the lungs of one image; the mask has the image's own size."""
    seg = segmenter or load_segmenter()
    pixels = image.pixels if isinstance(image, CXRImage) else np.asarray(image, dtype=np.float32)
    if pixels.ndim == 3:  # tolerate RGB arrays handed in directly
        pixels = pixels[..., :3].mean(axis=2)
    boxed, lb = letterbox(pixels, seg.size)
    prob256 = seg.predict(boxed[None])[0, seg.head_index(head)]
    prob = unletterbox(prob256, lb)
    return mask_from_probability(prob, threshold, head=head or settings.LUNGSEG_HEAD)


def segment_batch(
    images: Sequence[CXRImage | np.ndarray],
    segmenter: Segmenter | None = None,
    head: str | None = None,
    threshold: float = settings.LUNGSEG_THRESHOLD,
) -> list[LungMask]:
    """`segment` for several images in one forward pass (faster per image on CPU)."""
    if not images:
        return []
    seg = segmenter or load_segmenter()
    boxed, boxes = [], []
    for image in images:
        pixels = image.pixels if isinstance(image, CXRImage) else np.asarray(image, dtype=np.float32)
        if pixels.ndim == 3:
            pixels = pixels[..., :3].mean(axis=2)
        b, lb = letterbox(pixels, seg.size)
        boxed.append(b)
        boxes.append(lb)
    probs = seg.predict(np.stack(boxed))[:, seg.head_index(head)]
    return [
        mask_from_probability(unletterbox(p, lb), threshold, head=head or settings.LUNGSEG_HEAD)
        for p, lb in zip(probs, boxes)
    ]


def mask_from_probability(
    prob: np.ndarray, threshold: float = settings.LUNGSEG_THRESHOLD, head: str = settings.LUNGSEG_HEAD
) -> LungMask:
    mask = clean_mask(prob > threshold)
    ok, reason = lung_plausibility(mask)
    n = len(_components(mask))
    return LungMask(
        mask=mask,
        probability=prob.astype(np.float32, copy=False),
        n_components=n,
        lung_fraction=float(mask.mean()) if mask.size else 0.0,
        plausible=ok,
        reason=reason,
        head=head,
    )


def clean_mask(mask: np.ndarray, min_fraction: float = settings.LUNG_MIN_COMPONENT_FRACTION) -> np.ndarray:
    """Drop connected components smaller than `min_fraction` of the image."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_fraction * mask.size
    return keep[labels]


# --- components, plausibility, box -------------------------------------------------------------


@dataclass(frozen=True)
class _Component:
    area: float  # fraction of the image
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive
    cx: float
    cy: float

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0


def _as_bool(mask: LungMask | np.ndarray) -> np.ndarray:
    arr = mask.mask if isinstance(mask, LungMask) else np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _components(mask: np.ndarray, min_fraction: float = 0.0) -> list[_Component]:
    """Connected components, largest first."""
    if not mask.any():
        return []
    n, _, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    total = float(mask.size)
    out = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area / total < min_fraction:
            continue
        out.append(_Component(area / total, x, y, x + w, y + h, float(cents[i][0]), float(cents[i][1])))
    return sorted(out, key=lambda c: c.area, reverse=True)


def _side_by_side(a: _Component, b: _Component, width: int) -> bool:
    """Two lung fields: horizontally apart, vertically overlapping."""
    overlap = min(a.y1, b.y1) - max(a.y0, b.y0)
    return abs(a.cx - b.cx) >= 0.12 * width and overlap >= 0.5 * min(a.h, b.h)


def lung_fields(mask: LungMask | np.ndarray) -> list[_Component]:
    """The (at most two) components that look like lung fields, largest first."""
    m = _as_bool(mask)
    comps = _components(m, settings.LUNG_MIN_FIELD_FRACTION)
    if not comps:
        return []
    first = comps[0]
    for other in comps[1:]:
        if _side_by_side(first, other, m.shape[1]) and other.area >= 0.1 * first.area:
            return [first, other]
    return [first]


def _has_mediastinum(m: np.ndarray, f: _Component) -> bool:
    """A region holding both lungs has a gap (mediastinum) in the middle of its upper half."""
    top = m[f.y0 : f.y0 + max(1, f.h // 2), f.x0 : f.x1]
    if top.size == 0:
        return False
    cols = top.mean(axis=0)
    n = cols.size
    centre = cols[int(0.42 * n) : max(int(0.42 * n) + 1, int(0.58 * n))].mean()
    lateral = (cols[int(0.15 * n) : max(int(0.15 * n) + 1, int(0.35 * n))].mean()
               + cols[int(0.65 * n) : max(int(0.65 * n) + 1, int(0.85 * n))].mean()) / 2
    return lateral > 0.3 and centre < 0.5 * lateral


def lung_plausibility(mask: LungMask | np.ndarray) -> tuple[bool, str]:
    """Is this what the lungs of a frontal chest X-ray look like? -> (plausible, reason).

    Plausible: two lung fields of sensible size, side by side; or one lateral lung field that is
    taller than wide (the other lung collapsed or opacified); or both lungs merged into one
    region spanning the midline. Anything else (nothing found, specks, a blob covering the whole
    image, fields stacked vertically as in a rotated image) is implausible.
    """
    m = _as_bool(mask)
    h, w = m.shape
    frac = float(m.mean()) if m.size else 0.0
    lo, hi = settings.LUNG_TOTAL_FRACTION_RANGE
    if frac < lo:
        return False, f"no lung fields found (lung area {frac:.1%} of the image)"
    if frac > hi:
        return False, f"the 'lung' region covers {frac:.1%} of the image, too much for lungs"
    fields = lung_fields(m)
    if not fields:
        return False, "only small fragments were segmented; no lung field found"
    if len(fields) == 2:
        a, b = fields
        if a.h < 0.8 * a.w:  # lung fields are taller than wide; a rotated image gives wide bands
            return False, "the lung fields are wider than tall (image rotated or not a frontal CXR?)"
        if max(a.area, b.area) / min(a.area, b.area) > 6:
            return True, "two lung fields of very different size (one may be collapsed or opacified)"
        return True, "two lung fields side by side"
    f = fields[0]
    if f.w >= 0.45 * w and f.x0 < w / 2 < f.x1 and f.h >= 0.3 * h and f.h >= 0.6 * f.w and _has_mediastinum(m, f):
        return True, "both lung fields found, joined into one region"
    lateral = abs(f.cx - w / 2) >= 0.1 * w
    if lateral and f.h >= 0.25 * h and f.h >= 1.1 * f.w and f.area >= 0.04:
        return True, "only one lung field found (the other may be collapsed or opacified)"
    return False, "no pair of lung fields of sensible size and position found"


def chest_box(mask: LungMask | np.ndarray, margin: float = settings.LUNG_BOX_MARGIN) -> Region:
    """(x0, y0, x1, y1), exclusive end, always inside the image.

    Uses the two largest side-by-side lung fields (specks, a pacemaker pocket or a blob below
    the chest are ignored). With one field (collapsed lung) the box is mirrored about the
    image's vertical midline so the other hemithorax stays in. If nothing plausible is found the
    whole image is returned. `margin` is a fraction of the box width/height added on each side.
    """
    m = _as_bool(mask)
    h, w = m.shape
    whole: Region = (0, 0, int(w), int(h))
    if h == 0 or w == 0:
        return whole
    fields = lung_fields(m)
    if not fields:
        return whole
    x0 = min(f.x0 for f in fields)
    x1 = max(f.x1 for f in fields)
    y0 = min(f.y0 for f in fields)
    y1 = max(f.y1 for f in fields)
    if len(fields) == 1 and fields[0].w < 0.45 * w:
        x0, x1 = min(x0, w - x1), max(x1, w - x0)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    bx0 = int(max(0, math.floor(x0 - mx)))
    by0 = int(max(0, math.floor(y0 - my)))
    bx1 = int(min(w, math.ceil(x1 + mx)))
    by1 = int(min(h, math.ceil(y1 + my)))
    if bx1 - bx0 < max(8, 0.1 * w) or by1 - by0 < max(8, 0.1 * h):
        return whole
    return bx0, by0, bx1, by1


# --- viewer helpers ---------------------------------------------------------------------------


def outline(mask: LungMask | np.ndarray) -> list[np.ndarray]:
    """External contours of the lung mask, each an (K, 2) int array of (x, y) points."""
    m = _as_bool(mask).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours]


def outline_rgba(
    mask: LungMask | np.ndarray,
    colour: tuple[int, int, int] = (0, 200, 255),
    thickness: int | None = None,
    alpha: int = 220,
) -> np.ndarray:
    """An (H, W, 4) uint8 layer with the lung outline drawn, transparent elsewhere."""
    m = _as_bool(mask)
    h, w = m.shape
    layer = np.zeros((h, w, 4), dtype=np.uint8)
    t = thickness or max(1, round(max(h, w) / 300))
    contours = [c.reshape(-1, 1, 2).astype(np.int32) for c in outline(m)]
    if contours:
        cv2.drawContours(layer, contours, -1, (*colour, alpha), t)
    return layer
