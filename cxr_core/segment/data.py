"""The lungseg data set (letterboxed 256 px images, two mask conventions) and its augmentation."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from cxr_core import settings
from cxr_core.preprocess import robust_stretch


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
