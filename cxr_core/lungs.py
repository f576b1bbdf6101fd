"""Lung segmentation: a small U-Net (segmentation-models-pytorch, MobileNetV2 encoder).

What it is for:
- `chest_box` gives the chest/lung crop that classification and detection can use
  (`cxr_core.preprocess.standardise(pixels, size, box)`).
- `lung_plausibility` is a "does this look like a frontal chest X-ray?" signal for the
  quality / not-a-CXR check: no two lung fields of sensible size and position -> implausible.
- `outline` / `outline_rgba` draw the lung contour in the viewer.

Geometry: the image is letterboxed to 256 x 256 exactly like the training data (resize the long
side to 256 with INTER_AREA, zero-pad centred), the probability is cropped back out of the padding
and resized to the ORIGINAL image size. Intensities: `robust_stretch` (as everywhere else), ImageNet
mean/std, grey repeated to 3 channels.

The training data has two mask conventions (see /work/shared/data/lungseg/README.md), so the network
has two output channels ("heads"), each trained only on its own convention:
"field" = visible lung field with the heart excluded (GeneralBlockchain, radiologists),
"full"  = lung outline including the retrocardiac region (V7 Darwin).
`segment` uses `settings.LUNGSEG_HEAD` ("full") unless told otherwise.

CLI (`python -m cxr_core.lungs --help`): train, evaluate, predict, crop-boxes.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

from cxr_core import cfg, settings
from cxr_core.io import CXRImage
from cxr_core.preprocess import Box, robust_stretch
from cxr_core.provenance import code_version

__all__ = [
    "LungMask",
    "Segmenter",
    "load_segmenter",
    "segment",
    "segment_batch",
    "chest_box",
    "lung_plausibility",
    "outline",
    "outline_rgba",
    "letterbox",
    "build_model",
]


# --- geometry & input -------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """How an (h, w) image was placed in the size x size square."""

    scale: float
    pad_x: int
    pad_y: int
    new_w: int
    new_h: int
    orig_w: int
    orig_h: int


def letterbox(pixels: np.ndarray, size: int = settings.LUNGSEG_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Resize the long side to `size` (INTER_AREA when shrinking) and zero-pad, centred.

    Same recipe as the lungseg data set, so the network sees the geometry it was trained on.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {arr.shape}")
    h, w = arr.shape
    scale = size / max(h, w)
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(arr, (new_w, new_h), interpolation=interp) if (new_w, new_h) != (w, h) else arr
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.zeros((size, size), dtype=np.float32)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, Letterbox(scale, pad_x, pad_y, new_w, new_h, w, h)


def unletterbox(prob: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Inverse of `letterbox` for a size x size map: crop the padding, resize to (orig_h, orig_w)."""
    region = prob[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    if region.shape != (lb.orig_h, lb.orig_w):
        region = cv2.resize(region, (lb.orig_w, lb.orig_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(region, dtype=np.float32)


def to_input(batch: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Letterboxed float images (N, S, S) in [0, 1] -> robust-stretched, ImageNet-normalised (N, 3, S, S)."""
    stretched = np.stack([robust_stretch(np.asarray(p, dtype=np.float32)) for p in batch])
    return _normalise(torch.from_numpy(stretched))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(N, S, S) float in [0, 1] -> (N, 3, S, S) ImageNet-normalised."""
    mean = torch.tensor(settings.IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(settings.IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x.unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std


# --- model ------------------------------------------------------------------------------------


def build_model(
    encoder: str = settings.LUNGSEG_ENCODER,
    decoder_channels: Sequence[int] = settings.LUNGSEG_DECODER_CHANNELS,
    n_heads: int = len(settings.LUNGSEG_HEADS),
    imagenet: bool = False,
) -> torch.nn.Module:
    """smp.Unet, never downloading: encoder_weights=None, then (optionally) the shared ImageNet weights."""
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        encoder_name=encoder,
        encoder_weights=None,
        in_channels=3,
        classes=n_heads,
        decoder_channels=tuple(decoder_channels),
    )
    if imagenet:
        load_imagenet_encoder(model)
    return model


def load_imagenet_encoder(model: torch.nn.Module, path: Path | None = None) -> None:
    """Map the torchvision MobileNetV2 `features` state_dict onto smp's mobilenet_v2 encoder.

    smp's MobileNetV2Encoder subclasses torchvision's MobileNetV2, so its keys are the torchvision
    ones with a `features.` prefix; all 312 tensors match (strict load).
    """
    path = Path(path or settings.MOBILENET_V2_IMAGENET)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights not found at {path}; see /work/shared/weights/README.md "
            "(nothing is downloaded)."
        )
    src = torch.load(path, map_location="cpu", weights_only=True)
    mapped = {f"features.{k}": v for k, v in src.items()}
    model.encoder.load_state_dict(mapped, strict=True)


class Segmenter:
    """A loaded lung U-Net; `predict` maps letterboxed images to per-head probabilities."""

    def __init__(self, model: torch.nn.Module, config: dict):
        self.model = model.eval()
        self.config = config
        self.heads: tuple[str, ...] = tuple(config.get("heads", settings.LUNGSEG_HEADS))
        self.size: int = int(config.get("size", settings.LUNGSEG_SIZE))

    @torch.inference_mode()
    def predict(self, letterboxed: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, S, S) letterboxed float images -> (N, n_heads, S, S) float32 probabilities."""
        x = to_input(letterboxed)
        return torch.sigmoid(self.model(x)).numpy().astype(np.float32)

    def head_index(self, head: str | None) -> int:
        head = head or settings.LUNGSEG_HEAD
        if head not in self.heads:
            raise ValueError(f"unknown head {head!r}; choose one of {self.heads}")
        return self.heads.index(head)


def load_segmenter(path: str | Path | None = None) -> Segmenter:
    """Load the lung segmenter once per process (cached per path)."""
    return _load_segmenter(str(Path(path) if path is not None else settings.LUNGSEG_WEIGHTS))


@functools.lru_cache(maxsize=4)
def _load_segmenter(path: str) -> Segmenter:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"Lung segmentation weights not found at {p}. Train them with "
            "`python -m cxr_core.lungs train` (see docs/lungs.md)."
        )
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    config = dict(ckpt.get("config", {}))
    model = build_model(
        encoder=config.get("encoder", settings.LUNGSEG_ENCODER),
        decoder_channels=config.get("decoder_channels", settings.LUNGSEG_DECODER_CHANNELS),
        n_heads=len(config.get("heads", settings.LUNGSEG_HEADS)),
    )
    state = {k: v.float() for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    return Segmenter(model, config)


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


def chest_box(mask: LungMask | np.ndarray, margin: float = settings.LUNG_BOX_MARGIN) -> Box:
    """(x0, y0, x1, y1), exclusive end, always inside the image.

    Uses the two largest side-by-side lung fields (specks, a pacemaker pocket or a blob below
    the chest are ignored). With one field (collapsed lung) the box is mirrored about the
    image's vertical midline so the other hemithorax stays in. If nothing plausible is found the
    whole image is returned. `margin` is a fraction of the box width/height added on each side.
    """
    m = _as_bool(mask)
    h, w = m.shape
    whole: Box = (0, 0, int(w), int(h))
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


# --- data ---------------------------------------------------------------------------------------


def _source_key(row_id: str) -> str:
    return "gbseg" if row_id.startswith("gbseg_") else "darwin"


_SOURCE_HEAD = {"gbseg": "field", "darwin": "full"}


def load_split(split: str, data_dir: Path | None = None) -> dict:
    """Images (N, 256, 256) float32 [0, 1], masks bool, head index per image, ids and sources."""
    import pandas as pd

    data_dir = Path(data_dir or settings.LUNGSEG_DIR)
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"lungseg manifest not found at {manifest}")
    df = pd.read_csv(manifest)
    df = df[df["split"] == split].sort_values("id").reset_index(drop=True)
    images, masks = [], []
    for rid in df["id"]:
        img = cv2.imread(str(data_dir / "images" / f"{rid}.jpg"), cv2.IMREAD_GRAYSCALE)
        msk = cv2.imread(str(data_dir / "masks" / f"{rid}.png"), cv2.IMREAD_GRAYSCALE)
        if img is None or msk is None:
            raise FileNotFoundError(f"missing image or mask for {rid}")
        images.append(img.astype(np.float32) / 255.0)
        masks.append(msk > 127)
    sources = [_source_key(r) for r in df["id"]]
    heads = [settings.LUNGSEG_HEADS.index(_SOURCE_HEAD[s]) for s in sources]
    return {
        "ids": list(df["id"]),
        "sources": sources,
        "images": np.stack(images) if images else np.zeros((0, settings.LUNGSEG_SIZE, settings.LUNGSEG_SIZE), np.float32),
        "masks": np.stack(masks) if masks else np.zeros((0, settings.LUNGSEG_SIZE, settings.LUNGSEG_SIZE), bool),
        "heads": np.asarray(heads, dtype=np.int64),
    }


def _augment(img: np.ndarray, msk: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Small rotation/shift/scale (image + mask), then robust stretch and brightness/contrast/gamma."""
    s = img.shape[0]
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.88, 1.12)
    tx, ty = rng.uniform(-0.07, 0.07, size=2) * s
    mat = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    mat[:, 2] += (tx, ty)
    img = cv2.warpAffine(img, mat, (s, s), flags=cv2.INTER_LINEAR, borderValue=0.0)
    msk = cv2.warpAffine(msk.astype(np.uint8), mat, (s, s), flags=cv2.INTER_NEAREST, borderValue=0) > 0
    img = robust_stretch(img)
    c, b, g = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1), math.exp(rng.uniform(-0.25, 0.25))
    img = np.clip((np.clip(img, 0, 1) ** g) * c + b, 0.0, 1.0)
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (5, 5), rng.uniform(0.3, 1.2))
    if rng.random() < 0.2:
        img = np.clip(img + rng.normal(0, rng.uniform(0.01, 0.04), img.shape), 0, 1)
    return img.astype(np.float32), msk


def _random_crop(img: np.ndarray, msk: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y, x = (int(v) for v in rng.integers(0, img.shape[0] - size + 1, size=2))
    return img[y : y + size, x : x + size], msk[y : y + size, x : x + size]


def _masked_logits(logits: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """(N, K, S, S) logits -> (N, S, S): each image's own-convention head."""
    return logits[torch.arange(logits.shape[0]), heads]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
    return bce + dice.mean()


def dice_iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    pred, true = pred.astype(bool), true.astype(bool)
    inter = float(np.logical_and(pred, true).sum())
    ps, ts = float(pred.sum()), float(true.sum())
    union = ps + ts - inter
    if ps + ts == 0:
        return 1.0, 1.0
    return 2 * inter / (ps + ts), inter / union


def _predict_all(model: torch.nn.Module, images: np.ndarray, batch: int = 8) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(torch.sigmoid(model(to_input(images[i : i + batch]))).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2, settings.LUNGSEG_SIZE, settings.LUNGSEG_SIZE), np.float32)


def score(probs: np.ndarray, data: dict, threshold: float = settings.LUNGSEG_THRESHOLD) -> dict:
    """Dice/IoU per image (own-convention head, raw threshold) -> overall, per source, cross-head."""
    rows = []
    for i in range(len(data["ids"])):
        own = int(data["heads"][i])
        pred = probs[i, own] > threshold
        d, j = dice_iou(pred, data["masks"][i])
        d_clean, _ = dice_iou(clean_mask(pred), data["masks"][i])
        other = {h: dice_iou(probs[i, k] > threshold, data["masks"][i])[0] for k, h in enumerate(settings.LUNGSEG_HEADS)}
        rows.append({"id": data["ids"][i], "source": data["sources"][i], "dice": d, "iou": j, "dice_clean": d_clean, **{f"dice_head_{h}": v for h, v in other.items()}})

    def summary(rs: list[dict]) -> dict:
        if not rs:
            return {"n": 0}
        dice = np.array([r["dice"] for r in rs])
        out = {
            "n": len(rs),
            "dice": float(dice.mean()),
            "iou": float(np.mean([r["iou"] for r in rs])),
            "dice_median": float(np.median(dice)),
            "dice_min": float(dice.min()),
            "dice_cleaned": float(np.mean([r["dice_clean"] for r in rs])),
        }
        for h in settings.LUNGSEG_HEADS:
            out[f"dice_using_head_{h}"] = float(np.mean([r[f"dice_head_{h}"] for r in rs]))
        return out

    result = summary(rows)
    result["per_source"] = {
        src: {"head": _SOURCE_HEAD[src], **summary([r for r in rows if r["source"] == src])}
        for src in ("gbseg", "darwin")
    }
    result["per_image"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return result


# --- training -----------------------------------------------------------------------------------


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def export_weights(model: torch.nn.Module, path: Path, extra: dict | None = None) -> None:
    config = {
        "encoder": settings.LUNGSEG_ENCODER,
        "decoder_channels": list(settings.LUNGSEG_DECODER_CHANNELS),
        "heads": list(settings.LUNGSEG_HEADS),
        "size": settings.LUNGSEG_SIZE,
        "mean": list(settings.IMAGENET_MEAN),
        "std": list(settings.IMAGENET_STD),
        "input": "letterbox to 256 (INTER_AREA, zero pad, centred) -> robust_stretch -> ImageNet mean/std, 3 channels",
    }
    config.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, "config": config}, tmp)
    tmp.replace(path)


def train(
    epochs: int,
    out: Path,
    run_dir: Path,
    resume: bool = True,
    batch_size: int = 8,
    lr: float = 1e-3,
    threads: int = 1,
    log: Path | None = None,
    seed: int = settings.SEED,
    deadline: float | None = None,
    crop: int | None = None,
    freeze_blocks: int = 0,
) -> dict:
    """Train with checkpoint/resume (run_dir/last.pt); the best-val-Dice model is exported to `out`.

    `deadline` (a time.time() value): the cosine schedule is re-planned before every epoch to the
    number of epochs that still fit (at the mean epoch time so far), and training stops when the next
    epoch would not finish in time. On a shared CPU this keeps the schedule complete instead of
    cutting it off at a high learning rate.
    `crop`: train on random crop x crop windows of the (augmented) 256 images, same pixel scale as
    inference, less compute per step. `freeze_blocks`: keep the first N MobileNetV2 blocks (the
    expensive high-resolution ones) frozen, BatchNorm included.
    """
    from tqdm import tqdm

    torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    logf = open(log or run_dir / "train.log", "a", buffering=1)

    def say(msg: str) -> None:
        logf.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")

    train_data, val_data = load_split("train"), load_split("val")
    model = build_model(imagenet=True)
    frozen = model.encoder.features[:freeze_blocks] if freeze_blocks else None
    if frozen is not None:
        for prm in frozen.parameters():
            prm.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    state = {"epoch": 0, "step": 0, "best_dice": -1.0, "best_epoch": -1, "history": [], "train_seconds": 0.0}
    last = run_dir / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        say(f"resumed from {last} at epoch {state['epoch']}")
    n = len(train_data["ids"])
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch
    say(
        f"train n={n} val n={len(val_data['ids'])} epochs={epochs} batch={batch_size} lr={lr} threads={threads} "
        f"crop={crop} freeze_blocks={freeze_blocks}"
    )
    state.setdefault("settings", []).append(
        {"epoch": state["epoch"], "crop": crop, "freeze_blocks": freeze_blocks, "batch": batch_size, "lr": lr, "threads": threads}
    )
    planned = epochs
    first_epoch = state["epoch"]
    for epoch in range(state["epoch"], epochs):
        t0 = time.time()
        if deadline is not None and epoch > first_epoch:  # time only epochs run by this process
            per_epoch = float(np.mean([r["seconds"] for r in state["history"][first_epoch:][-2:]]))
            fit = int((deadline - t0) // per_epoch)
            if fit < 1:
                say(f"stopping before epoch {epoch + 1}: the deadline leaves no time for another epoch")
                break
            new_plan = max(epoch + 1, min(epochs, epoch + fit))
            if new_plan != planned:
                say(f"deadline: planning {new_plan} epochs in all ({per_epoch:.0f}s per epoch)")
            planned = new_plan
            if state["step"] >= planned * steps_per_epoch:  # re-planned below what has been run
                break
        total = planned * steps_per_epoch
        rng = np.random.default_rng(seed + epoch)
        order = rng.permutation(n)
        model.train()
        if frozen is not None:
            frozen.eval()
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{planned}", file=logf, mininterval=20, ncols=100)
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs > 1 sample
                continue
            pairs = [_augment(train_data["images"][i], train_data["masks"][i], rng) for i in idx]
            if crop and crop < pairs[0][0].shape[0]:
                pairs = [_random_crop(im, mk, crop, rng) for im, mk in pairs]
            x = _normalise(torch.from_numpy(np.stack([p[0] for p in pairs])))
            y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.float32))
            heads = torch.from_numpy(train_data["heads"][idx])
            for g in opt.param_groups:
                g["lr"] = _lr_at(state["step"], total, lr, warmup)
            loss = _loss(_masked_logits(model(x), heads), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}", refresh=False)
        bar.close()
        probs = _predict_all(model, val_data["images"])
        val = score(probs, val_data)
        secs = time.time() - t0
        state["train_seconds"] += secs
        state["epoch"] = epoch + 1
        rec = {
            "epoch": epoch + 1,
            "planned_epochs": planned,
            "lr_end": opt.param_groups[0]["lr"],
            "loss": float(np.mean(losses)) if losses else None,
            "val_dice": val["dice"],
            "val_iou": val["iou"],
            "val_dice_gbseg": val["per_source"]["gbseg"].get("dice"),
            "val_dice_darwin": val["per_source"]["darwin"].get("dice"),
            "seconds": round(secs, 1),
        }
        state["history"].append(rec)
        improved = val["dice"] > state["best_dice"]
        if improved:
            state["best_dice"], state["best_epoch"] = val["dice"], epoch + 1
            export_weights(
                model,
                out,
                {"epoch": epoch + 1, "epochs_planned": epochs, "val_dice": round(val["dice"], 4)},
            )
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}, last.with_suffix(".tmp"))
        last.with_suffix(".tmp").replace(last)
        (run_dir / "history.json").write_text(json.dumps(state, indent=1))
        say(
            f"epoch {epoch + 1}/{planned} loss {rec['loss']:.4f} val dice {val['dice']:.4f} "
            f"(gbseg {rec['val_dice_gbseg'] or 0:.4f}, darwin {rec['val_dice_darwin'] or 0:.4f}) iou {val['iou']:.4f} "
            f"{secs:.0f}s{' *best, exported' if improved else ''}"
        )
    say(f"done: best val dice {state['best_dice']:.4f} at epoch {state['best_epoch']}, {state['train_seconds'] / 60:.1f} min")
    logf.close()
    return state


# --- evaluation / latency ------------------------------------------------------------------------


def measure_latency(seg: Segmenter, images: Iterable[np.ndarray], threads: int = settings.TORCH_THREADS, repeats: int = 1) -> dict:
    """Wall time of `segment` (letterbox + network + map back + plausibility) per image."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        imgs = list(images)
        segment(imgs[0], seg)  # warm-up
        times, cpu = [], []
        for _ in range(repeats):
            for im in imgs:
                t, c = time.perf_counter(), time.process_time()
                segment(im, seg)
                times.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
    finally:
        torch.set_num_threads(old)
    arr = np.array(times)
    try:
        import os

        load1 = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    return {
        "threads": threads,
        "n": len(arr),
        "ms_mean": round(float(arr.mean()), 1),
        "ms_median": round(float(np.median(arr)), 1),
        "ms_p95": round(float(np.percentile(arr, 95)), 1),
        # CPU time summed over threads: on a busy shared machine wall time is mostly waiting, and
        # cpu_ms / threads is a lower bound of the wall time on an idle machine.
        "cpu_ms_median": round(float(np.median(cpu)), 1),
        "load_average_1min": load1,
        "cpu_count": os.cpu_count(),
    }


def evaluate(split: str, weights: Path | None = None, threads: int = settings.TORCH_THREADS, latency: bool = True) -> dict:
    seg = load_segmenter(weights)
    torch.set_num_threads(threads)
    data = load_split(split)
    probs = _predict_all(seg.model, data["images"])
    result = {"split": split, "weights": str(weights or settings.LUNGSEG_WEIGHTS), "threshold": settings.LUNGSEG_THRESHOLD}
    result.update(score(probs, data))
    result["note"] = (
        "Dice/IoU per image at 256x256 in the data set's letterboxed geometry, averaged over images; each image "
        "is scored with the head of its own mask convention (gbseg->field, darwin->full). dice_cleaned: after "
        "removing specks; dice_using_head_*: every image scored against one head."
    )
    result["plausible_fraction"] = float(
        np.mean([lung_plausibility(clean_mask(probs[i, int(data["heads"][i])] > settings.LUNGSEG_THRESHOLD))[0]
                 for i in range(len(probs))])
    ) if len(probs) else None
    if latency and len(probs):
        result["latency"] = measure_latency(seg, data["images"][:20], threads=threads, repeats=2)
    return result


# --- crop boxes for cxr3 -------------------------------------------------------------------------


def crop_boxes(
    manifest: Path, out: Path, weights: Path | None = None, threads: int = 1, limit: int | None = None, batch: int = 16
) -> int:
    """Chest box of every image in a manifest (column `path`, relative to the manifest's folder).

    Boxes are in `load_image` pixel coordinates (large images are downscaled to a 1024 long side
    there), plus the same box as fractions of width/height, which survive any resize.
    Resumable: rows already in `out` are skipped.
    """
    import pandas as pd
    from tqdm import tqdm

    from cxr_core.io import ImageLoadError, load_image

    torch.set_num_threads(threads)
    seg = load_segmenter(weights)
    df = pd.read_csv(manifest)
    if limit:
        df = df.head(limit)
    root = Path(manifest).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if out.is_file():
        with open(out, newline="") as f:
            done = {r["path"] for r in csv.DictReader(f)}
    cols = [
        "path", "split", "label", "width", "height", "x0", "y0", "x1", "y1",
        "x0_frac", "y0_frac", "x1_frac", "y1_frac", "lung_fraction", "n_components", "plausible", "reason",
    ]
    new_file = not out.is_file() or not done
    rows = [r for r in df.itertuples(index=False) if str(r.path) not in done]
    written = 0
    with open(out, "a" if not new_file else "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        if new_file:
            w.writeheader()
        bar = tqdm(total=len(rows), file=sys.stderr, mininterval=30, ncols=100)
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            recs, imgs = [], []
            for row in chunk:
                rec = {"path": str(row.path), "split": getattr(row, "split", ""), "label": getattr(row, "label", "")}
                try:
                    imgs.append(load_image(root / str(row.path)))
                except ImageLoadError as exc:
                    imgs.append(None)
                    rec.update(reason=f"load error: {exc}", plausible=0)
                recs.append(rec)
            ok = [i for i, im in enumerate(imgs) if im is not None]
            for i, lm in zip(ok, segment_batch([imgs[i] for i in ok], seg)):
                x0, y0, x1, y1 = chest_box(lm)
                hh, ww = imgs[i].pixels.shape
                recs[i].update(
                    width=ww, height=hh, x0=x0, y0=y0, x1=x1, y1=y1,
                    x0_frac=round(x0 / ww, 5), y0_frac=round(y0 / hh, 5),
                    x1_frac=round(x1 / ww, 5), y1_frac=round(y1 / hh, 5),
                    lung_fraction=round(lm.lung_fraction, 4), n_components=lm.n_components,
                    plausible=int(lm.plausible), reason=lm.reason,
                )
            w.writerows(recs)
            f.flush()
            written += len(recs)
            bar.update(len(recs))
        bar.close()
    return written


# --- model card ---------------------------------------------------------------------------------


def _schedule_note(stages: list[dict], epochs: int | None) -> str:
    """Say plainly when a run was resumed with other settings, since its history then mixes regimes."""

    def regime(st: dict) -> str:
        crop = f"random {st['crop']}x{st['crop']} windows" if st.get("crop") else "full 256x256 images"
        frozen = f", first {st['freeze_blocks']} encoder blocks frozen" if st.get("freeze_blocks") else ", all layers trained"
        return crop + frozen

    if len(stages) <= 1:
        return f"{epochs} epochs in one schedule: {regime(stages[0]) if stages else 'full 256x256 images, all layers trained'}."
    parts = [f"from epoch {st['epoch'] + 1}: {regime(st)}" for st in stages]
    return "resumed with other settings (see `stages`): " + "; ".join(parts) + "."


def write_card(run_dir: Path, weights: Path, metrics: dict, card: Path) -> dict:
    import pandas as pd

    hist = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else {}
    df = pd.read_csv(settings.LUNGSEG_DIR / "manifest.csv")
    split_sizes = {k: int(v) for k, v in df["split"].value_counts().items()}
    per_source = {
        src: {k: int(v) for k, v in df[df["id"].str.startswith(src + "_")]["split"].value_counts().items()}
        for src in ("gbseg", "darwin")
    }
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)

    stages = hist.get("settings") or []
    threads = sorted({st.get("threads", 1) for st in stages}) or [1]  # runs before threads were recorded used 1

    def brief(m: dict) -> dict:
        return {
            "n": m["n"], "dice": round(m["dice"], 4), "iou": round(m["iou"], 4),
            "per_source": {s: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()} for s, d in m["per_source"].items()},
        }

    info = {
        "name": "lungseg",
        "task": "both-lung segmentation of frontal chest X-rays (chest crop box, plausibility signal, viewer outline)",
        "model": {
            "architecture": "segmentation_models_pytorch.Unet",
            "encoder": settings.LUNGSEG_ENCODER,
            "encoder_init": "ImageNet (torchvision MobileNetV2 features, /work/shared/weights/mobilenet_v2_imagenet_features.pth)",
            "decoder_channels": list(settings.LUNGSEG_DECODER_CHANNELS),
            "heads": {"field": "visible lung field, heart excluded (GeneralBlockchain convention)",
                      "full": "lung outline incl. retrocardiac region (V7 Darwin convention); default"},
            "parameters": int(sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))),
            "file_bytes": weights.stat().st_size,
            "input": ckpt["config"].get("input"),
            "threshold": settings.LUNGSEG_THRESHOLD,
        },
        "data": {
            "set": "lungseg (/work/shared/data/lungseg): 463 real 256x256 letterboxed CXRs (ieee8023 images), GeneralBlockchain + V7 Darwin masks",
            "split_sizes": split_sizes,
            "split_sizes_per_source": per_source,
            "split_rule": "by patient (SHA-1 of patient id), from the data set",
            "limitations": "almost all images diseased (COVID-19/pneumonia), many AP/portable; no normal or TB screening images",
        },
        "training": {
            "epochs": hist.get("epoch"),
            "best_epoch": hist.get("best_epoch"),
            "train_minutes": round(hist.get("train_seconds", 0) / 60, 1),
            "hardware": f"CPU, {'/'.join(map(str, threads))} torch thread(s) of a 2-core machine",
            "schedule_note": _schedule_note(stages, hist.get("epoch")),
            "optimizer": "AdamW lr 1e-3, wd 1e-4, 1 epoch warm-up + cosine, batch 8",
            "loss": "BCE + soft Dice on each image's own-convention head",
            "augmentation": "rotation +-10 deg, scale 0.88-1.12, shift +-7%, brightness/contrast/gamma, light blur/noise; no flips",
            "selection": "best val Dice (mean of own-convention heads)",
            "stages": hist.get("settings"),
            "history": [
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in hist.get("history", [])
            ],
        },
        "metrics": {"val": brief(metrics["val"]), "test": brief(metrics["test"])},
        "latency": metrics.get("test", {}).get("latency"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "code_version": code_version(),
        "licence_note": "images: ieee8023 (per-image licences, many unstated) -> research / non-commercial use only; masks CC BY 4.0",
        "intended_use": "pre-processing crop and sanity check in a research decision-support prototype; not a diagnostic device",
    }
    card.write_text(json.dumps(info, indent=2))
    return info


# --- CLI ----------------------------------------------------------------------------------------


def _cli(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr_core.lungs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    # defaults from cfg/segment.yaml (+ --config FILE); each run's settings are kept per stage in its state
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    try:
        recipe = cfg.load("segment", pre.parse_known_args(argv)[0].config)
    except cfg.ConfigError as exc:
        raise SystemExit(str(exc)) from None
    t = sub.add_parser("train", help="train the U-Net (resumes from RUN_DIR/last.pt)")
    t.add_argument("--config", type=Path, default=None, help="YAML recipe on top of cxr_core/cfg/segment.yaml")
    t.add_argument("--epochs", type=int, default=recipe["epochs"])
    t.add_argument("--out", type=Path, default=settings.LUNGSEG_WEIGHTS)
    t.add_argument("--run-dir", type=Path, default=settings.CACHE_DIR / "lungseg_run")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--batch-size", type=int, default=recipe["batch_size"])
    t.add_argument("--lr", type=float, default=recipe["lr"])
    t.add_argument("--threads", type=int, default=recipe["threads"])
    t.add_argument("--log", type=Path, default=None)
    t.add_argument("--crop", type=int, default=recipe["crop"], help="train on random CROP x CROP windows (less compute)")
    t.add_argument("--freeze-blocks", type=int, default=recipe["freeze_blocks"], help="freeze the first N encoder blocks")
    t.add_argument("--until", default=None, help="UTC HH:MM today: re-plan epochs to finish by then")

    e = sub.add_parser("evaluate", help="Dice/IoU on a split (+ latency)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--weights", type=Path, default=None)
    e.add_argument("--out", type=Path, default=None)
    e.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    e.add_argument("--no-latency", action="store_true")

    c = sub.add_parser("card", help="evaluate val+test and write weights/lungseg.json + weights/lungseg_metrics.json")
    c.add_argument("--run-dir", type=Path, default=settings.CACHE_DIR / "lungseg_run")
    c.add_argument("--weights", type=Path, default=settings.LUNGSEG_WEIGHTS)
    c.add_argument("--threads", type=int, default=settings.TORCH_THREADS)

    pr = sub.add_parser("predict", help="segment one image and write the mask PNG")
    pr.add_argument("image", type=Path)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--weights", type=Path, default=None)
    pr.add_argument("--head", default=None, choices=list(settings.LUNGSEG_HEADS))
    pr.add_argument("--overlay", type=Path, default=None, help="also write the image with outline and box")

    cb = sub.add_parser("crop-boxes", help="chest box for every image of a manifest -> CSV")
    cb.add_argument("--manifest", type=Path, default=settings.CXR3_MANIFEST)
    cb.add_argument("--out", type=Path, default=settings.CACHE_DIR / "cxr3_lung_boxes.csv")
    cb.add_argument("--weights", type=Path, default=None)
    cb.add_argument("--threads", type=int, default=1)
    cb.add_argument("--limit", type=int, default=None)

    a = p.parse_args(argv)
    if a.cmd == "train":
        deadline = None
        if a.until:
            import calendar

            hh, mm = (int(v) for v in a.until.split(":"))
            now = time.gmtime()
            deadline = float(calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, 0)))
        state = train(
            a.epochs, a.out, a.run_dir, resume=not a.no_resume, batch_size=a.batch_size, lr=a.lr,
            threads=a.threads, log=a.log, deadline=deadline, crop=a.crop, freeze_blocks=a.freeze_blocks,
        )
        print(json.dumps({k: state[k] for k in ("epoch", "best_epoch", "best_dice", "train_seconds")}))
    elif a.cmd == "evaluate":
        res = evaluate(a.split, a.weights, threads=a.threads, latency=not a.no_latency)
        text = json.dumps(res, indent=1)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(text)
        short = {k: v for k, v in res.items() if k != "per_image"}
        print(json.dumps(short, indent=1))
    elif a.cmd == "card":
        metrics = {
            "val": evaluate("val", a.weights, threads=a.threads, latency=False),
            "test": evaluate("test", a.weights, threads=a.threads, latency=True),
        }
        metrics_path = a.weights.with_name(a.weights.stem + "_metrics.json")
        metrics_path.write_text(json.dumps(metrics, indent=1))
        info = write_card(a.run_dir, a.weights, metrics, a.weights.with_suffix(".json"))
        print(json.dumps(info["metrics"], indent=1), json.dumps(info["latency"]))
    elif a.cmd == "predict":
        from cxr_core.io import load_image

        img = load_image(a.image)
        lm = segment(img, load_segmenter(a.weights), head=a.head)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(a.out), lm.mask.astype(np.uint8) * 255)
        box = chest_box(lm)
        if a.overlay:
            rgb = cv2.cvtColor(img.to_uint8(), cv2.COLOR_GRAY2BGR)
            layer = outline_rgba(lm)
            on = layer[..., 3] > 0
            rgb[on] = layer[on][:, [2, 1, 0]]
            cv2.rectangle(rgb, box[:2], (box[2] - 1, box[3] - 1), (0, 255, 0), max(1, img.width // 300))
            cv2.imwrite(str(a.overlay), rgb)
        print(json.dumps({
            "image": str(a.image), "mask": str(a.out), "size": [img.width, img.height], "chest_box": list(box),
            "lung_fraction": round(lm.lung_fraction, 4), "n_components": lm.n_components,
            "plausible": lm.plausible, "reason": lm.reason, "head": lm.head,
        }))
    elif a.cmd == "crop-boxes":
        n = crop_boxes(a.manifest, a.out, a.weights, threads=a.threads, limit=a.limit)
        print(json.dumps({"written": n, "out": str(a.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
