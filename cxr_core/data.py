"""The cxr3 manifest (or a folder of one sub-folder per class) and a decoded, quality-filtered,
resized cache of it.

Decoding and resizing 4,125 JPEGs every epoch would cost more than training a small head,
so each (size, crop) combination is decoded once through the same `load_image` ->
`standardise` path the app uses and stored as a uint8 array under cache/.

A manifest's class order is the run's (`manifest_classes`): cxr3's `settings.CLASSES` for the cxr3
manifest, the sorted folder names for a hospital's own folder (`class_folders`, `split_folder`),
so label indices always come from the classes the model is trained on, never from a global.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxr_core import settings
from cxr_core.io import load_image
from cxr_core.preprocess import standardise
from cxr_core.provenance import sha256_file

CLASS_TO_INDEX = {c: i for i, c in enumerate(settings.CLASSES)}  # cxr3's; a run's own: class_index(classes)
IMAGE_SUFFIXES: frozenset[str] = frozenset("." + t for t in settings.UPLOAD_TYPES)
SPLIT_FRACTIONS: dict[str, float] = {"val": 0.15, "test": 0.15}  # the rest trains; cxr3's 70/15/15
MIN_FILMS_PER_CLASS = 3  # one each for train, val and test


def class_index(classes: Sequence[str] = settings.CLASSES) -> dict[str, int]:
    """Label -> output index for a run with `classes` (their order is the model's output order)."""
    return {c: i for i, c in enumerate(classes)}


def manifest_classes(labels: Iterable[str]) -> tuple[str, ...]:
    """The classes of a manifest: cxr3's (all three, in their order) when every label is one of them,
    so the cxr3 manifest and subsets of it train exactly as before; otherwise the sorted labels."""
    found = set(labels)
    return settings.CLASSES if found <= set(settings.CLASSES) else tuple(sorted(found))


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


def read_manifest(path: Path = settings.CXR3_MANIFEST, classes: Sequence[str] | None = settings.CLASSES) -> pd.DataFrame:
    """Manifest rows with an absolute `file` column; paths in the CSV are relative to it.

    Labels must be among `classes` (None: any label, for finding a manifest's classes first)."""
    df = pd.read_csv(path)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    df["file"] = [str((Path(path).parent / p).resolve()) for p in df["path"]]
    unknown = set(df["label"]) - set(classes) if classes is not None else set()
    if unknown:
        raise ValueError(f"{path} has unknown labels {sorted(unknown)}")
    return df


def _images_in(sub: Path) -> list[Path]:
    return [f for f in sorted(sub.iterdir()) if f.is_file() and not f.name.startswith(".")
            and f.suffix.lower() in IMAGE_SUFFIXES] if sub.is_dir() else []


def class_folders(folder: Path) -> tuple[str, ...]:
    """The classes of a training folder: its sub-folders that hold images, sorted (= output order).

    Raises SystemExit with what is wrong (a user's folder, not a bug): not a folder, or fewer than
    two classes with images, or a class too small to put one film in each of train, val and test."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"{folder} is not a folder; --data FOLDER needs one sub-folder of images per class.")
    counts = {sub.name: len(_images_in(sub)) for sub in sorted(folder.iterdir())
              if sub.is_dir() and not sub.name.startswith(".")}
    classes = tuple(c for c, n in counts.items() if n)
    if len(classes) < 2:
        found = ", ".join(f"{c} ({n})" for c, n in counts.items()) or "none"
        raise SystemExit(f"{folder} needs at least 2 sub-folders of images, one per class; found {len(classes)} "
                         f"with images (sub-folders and image counts: {found}). Image types: "
                         f"{', '.join(settings.UPLOAD_TYPES)}.")
    small = {c: counts[c] for c in classes if counts[c] < MIN_FILMS_PER_CLASS}
    if small:
        raise SystemExit(f"Each class needs at least {MIN_FILMS_PER_CLASS} images (one each for train, val and "
                         f"test); too few in {', '.join(f'{c} ({n})' for c, n in small.items())}.")
    return classes


def folder_manifest(folder: Path, classes: Sequence[str] | None = settings.CLASSES) -> pd.DataFrame:
    """A folder with one sub-folder per class as a manifest (split 'all'): the sub-folders named in
    `classes` (cxr3's covid/, normal/, viral_pneumonia/ by default, or an evaluated classifier's
    classes), or every sub-folder with images (`classes=None`, see `class_folders`)."""
    classes = class_folders(folder) if classes is None else classes
    rows = []
    for label in classes:
        for f in _images_in(Path(folder) / label):
            rows.append({"path": str(f.relative_to(folder)), "label": label, "file": str(f.resolve()), "split": "all"})
    if not rows:
        raise ValueError(f"{folder} has no images in sub-folders {', '.join(classes)}")
    return pd.DataFrame(rows)


def split_folder(folder: Path, out_csv: Path, seed: int = settings.SEED) -> tuple[Path, tuple[str, ...]]:
    """Split a folder of class sub-folders train/val/test, stratified by class, with a fixed seed,
    and write the split as a manifest CSV (`path,label,split`, paths relative to the CSV).

    Why a file: the split is part of what was trained, so it is kept next to the model card; passing
    it back as `--data` reproduces the run exactly, and evaluating on its test rows scores films the
    model never saw. Returns (the CSV, the classes in output order)."""
    classes = class_folders(folder)
    df = folder_manifest(folder, classes)
    rng = np.random.default_rng(seed)
    split = np.empty(len(df), dtype=object)
    for label in classes:  # stratified: each class is split on its own, in the same proportions
        idx = rng.permutation(np.flatnonzero((df["label"] == label).to_numpy()))
        n_val, n_test = (max(1, int(round(len(idx) * SPLIT_FRACTIONS[s]))) for s in ("val", "test"))
        split[idx[:n_val]] = "val"
        split[idx[n_val:n_val + n_test]] = "test"
        split[idx[n_val + n_test:]] = "train"
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    rel = [os.path.relpath(f, out_csv.parent.resolve()) for f in df["file"]]
    pd.DataFrame({"path": rel, "label": df["label"], "split": split}).to_csv(out_csv, index=False)
    return out_csv, classes


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
    manifest: Path = settings.CXR3_MANIFEST, size: int = 256, boxes_csv: Path | None = None,
    classes: Sequence[str] = settings.CLASSES,
) -> Path:
    """Decode every image once; store pixels, labels and quality verdicts. Returns the cache file
    (named by the manifest's checksum, so another split or folder never reuses it)."""
    from cxr_core.gate.quality import assess

    tag = f"cxr3_{size}{'_lungcrop' if boxes_csv else ''}_{sha256_file(manifest)[:10]}"
    out = settings.CACHE_DIR / f"{tag}.npz"
    if out.exists():
        return out
    df = read_manifest(manifest, classes)
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


def load_split(cache: Path, manifest: Path, split: str, drop_failed: bool,
               classes: Sequence[str] = settings.CLASSES) -> CachedSplit:
    """One split of the cache; labels are indices into `classes` (the run's output order)."""
    df = read_manifest(manifest, classes)
    with np.load(cache) as z:
        images, verdict, paths = z["images"], z["verdict"], z["path"]
    if list(paths) != list(df["path"]):
        raise ValueError(f"{cache} does not match {manifest}; delete the cache and rebuild")
    df = df.assign(quality=verdict)
    keep = (df["split"] == split).to_numpy().copy()
    if drop_failed:
        keep &= (df["quality"] != "fail").to_numpy()
    frame = df[keep].reset_index(drop=True)
    labels = frame["label"].map(class_index(classes)).to_numpy(dtype=np.int64)
    return CachedSplit(images=images[keep], labels=labels, frame=frame)
