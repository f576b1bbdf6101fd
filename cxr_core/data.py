"""The cxr3 manifest and a decoded, quality-filtered, resized cache of it.

Decoding and resizing 4,125 JPEGs every epoch would cost more than training a small head,
so each (size, crop) combination is decoded once through the same `load_image` ->
`standardise` path the app uses and stored as a uint8 array under cache/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxr_core import settings
from cxr_core.io import load_image
from cxr_core.preprocess import standardise
from cxr_core.provenance import sha256_file

CLASS_TO_INDEX = {c: i for i, c in enumerate(settings.CLASSES)}


def manifest_rows(split: str | None = None, path: Path | None = None) -> list[dict[str, str]]:
    """The cxr3 manifest's rows (optionally one split; None or 'all' = every split), sorted by path.

    The one reader of the manifest for tools that need rows, not a DataFrame (quality calibration,
    the not-a-CXR evaluation, sampling test films). Raises FileNotFoundError when it is absent.
    """
    import csv

    path = Path(path or settings.CXR3_MANIFEST)
    if not path.is_file():
        raise FileNotFoundError(f"cxr3 manifest not found at {path}")
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if split in (None, "all") or r["split"] == split]
    return sorted(rows, key=lambda r: r["path"])


def sample_balanced(n: int, seed: int = settings.SEED, split: str = "test") -> list[tuple[Path, str]]:
    """`n` (absolute path, label) pairs of one split, round-robin over the classes, seeded.

    The film sample of the heatmap sanity study and the benchmark: balanced, so a class-specific
    effect is not hidden by the majority class, and stable for a seed, so reruns compare."""
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in manifest_rows(split):
        by_label.setdefault(r["label"], []).append(r)
    rng = np.random.default_rng(seed)
    for lst in by_label.values():
        rng.shuffle(lst)
    picked: list[tuple[Path, str]] = []
    i = 0
    while len(picked) < n and any(i < len(v) for v in by_label.values()):
        for label in sorted(by_label):
            if i < len(by_label[label]) and len(picked) < n:
                picked.append((settings.CXR3_DIR / by_label[label][i]["path"], label))
        i += 1
    return picked


def read_manifest(path: Path = settings.CXR3_MANIFEST) -> pd.DataFrame:
    """Manifest rows with an absolute `file` column; paths in the CSV are relative to it."""
    df = pd.read_csv(path)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    df["file"] = [str((Path(path).parent / p).resolve()) for p in df["path"]]
    unknown = set(df["label"]) - set(settings.CLASSES)
    if unknown:
        raise ValueError(f"{path} has unknown labels {sorted(unknown)}")
    return df


def folder_manifest(folder: Path) -> pd.DataFrame:
    """A folder with covid/, normal/, viral_pneumonia/ sub-folders as a manifest (split 'all')."""
    rows = []
    for label in settings.CLASSES:
        sub = Path(folder) / label
        if not sub.is_dir():
            continue
        for f in sorted(sub.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                rows.append({"path": str(f.relative_to(folder)), "label": label, "file": str(f.resolve()), "split": "all"})
    if not rows:
        raise ValueError(f"{folder} has no images in sub-folders {', '.join(settings.CLASSES)}")
    return pd.DataFrame(rows)


def read_boxes(path: Path | None) -> dict[str, tuple[int, int, int, int]]:
    """Chest crop boxes (x0, y0, x1, y1) per manifest path, as written by `python -m cxr_core.lungs crop-boxes`."""
    if path is None:
        return {}
    df = pd.read_csv(path)
    return {r.path: (int(r.x0), int(r.y0), int(r.x1), int(r.y1)) for r in df.itertuples()}


@dataclass
class CachedSplit:
    images: np.ndarray  # uint8 (N, S, S)
    labels: np.ndarray  # int64 (N,)
    frame: pd.DataFrame  # the manifest rows, same order


def build_cache(
    manifest: Path = settings.CXR3_MANIFEST, size: int = 256, boxes_csv: Path | None = None
) -> Path:
    """Decode every image once; store pixels, labels and quality verdicts. Returns the cache file."""
    from cxr_core.gate.quality import assess

    tag = f"cxr3_{size}{'_lungcrop' if boxes_csv else ''}_{sha256_file(manifest)[:10]}"
    out = settings.CACHE_DIR / f"{tag}.npz"
    if out.exists():
        return out
    df = read_manifest(manifest)
    boxes = read_boxes(boxes_csv)
    images = np.zeros((len(df), size, size), np.uint8)
    verdicts: list[str] = []
    for i, row in enumerate(tqdm(df.itertuples(), total=len(df), desc=f"decode {size}px", mininterval=5)):
        image = load_image(row.file)
        verdicts.append(assess(image, check_plausibility=False).verdict)  # the filter is about quality only
        images[i] = standardise(image.pixels, size, boxes.get(row.path))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=images, verdict=np.array(verdicts), path=df["path"].to_numpy(dtype=str))
    return out


def load_split(cache: Path, manifest: Path, split: str, drop_failed: bool) -> CachedSplit:
    df = read_manifest(manifest)
    with np.load(cache) as z:
        images, verdict, paths = z["images"], z["verdict"], z["path"]
    if list(paths) != list(df["path"]):
        raise ValueError(f"{cache} does not match {manifest}; delete the cache and rebuild")
    df = df.assign(quality=verdict)
    keep = (df["split"] == split).to_numpy().copy()
    if drop_failed:
        keep &= (df["quality"] != "fail").to_numpy()
    frame = df[keep].reset_index(drop=True)
    labels = frame["label"].map(CLASS_TO_INDEX).to_numpy(dtype=np.int64)
    return CachedSplit(images=images[keep], labels=labels, frame=frame)
