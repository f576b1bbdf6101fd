"""Build a YOLO dataset (images/ + labels/ + data.yaml) for the chest X-ray detector.

Two sources, one output layout:

* the shared subset (``settings.VINBIG_DIR``: ``labels.csv`` + ``images/<id>.jpg`` with a given
  train/val/test split) plus TBX11K tuberculosis boxes (``settings.TBX11K_DIR``);
* the full Kaggle "VinBigData Chest X-ray Abnormalities Detection" download (``train.csv`` +
  ``train/<image_id>.dicom``), decoded through :func:`cxr_core.io.load_image` (which applies the
  DICOM VOI LUT and MONOCHROME1 inversion) and written as 8-bit JPEGs.

Radiologists' boxes are fused per image and class with weighted boxes fusion
(``ensemble_boxes.weighted_boxes_fusion``), rescaled from original DICOM pixels to the stored
image size and written as normalised YOLO lines. "No finding" images get an empty label file
(YOLO background images). Images are linked (symlink) rather than copied where possible.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from cxr_core import settings
from cxr_core.boxes import Box

SPLITS = ("train", "val", "test")
NO_FINDING_ID = 14  # VinBigData class_id of "No finding" (no box)
TB_SOURCE_TO_ID = {
    "ActiveTuberculosis": len(settings.VINBIG_CLASSES),  # 14
    "ObsoletePulmonaryTuberculosis": len(settings.VINBIG_CLASSES) + 1,  # 15
}


# --- label transforms ---------------------------------------------------------------------


def fuse_radiologists(
    rows: pd.DataFrame, width: int, height: int, iou_thr: float = settings.DETECTOR_WBF_IOU
) -> list[Box]:
    """Fuse one image's radiologist boxes per class with weighted boxes fusion.

    ``rows`` has columns class_id, x_min, y_min, x_max, y_max in original pixels (rows of
    "No finding" / empty boxes are ignored). Every radiologist's box gets score 1; WBF merges
    boxes of the same class overlapping above ``iou_thr`` into their (equal-weight) average box.
    Returns fused boxes in the same original pixel coordinates.
    """
    from ensemble_boxes import weighted_boxes_fusion

    rows = rows.dropna(subset=["x_min", "y_min", "x_max", "y_max"])
    rows = rows[rows["class_id"].astype(int) != NO_FINDING_ID]
    if rows.empty:
        return []
    scale = np.array([width, height, width, height], dtype=np.float64)
    xyxy = rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64) / scale
    xyxy = np.clip(xyxy, 0.0, 1.0)
    labels = rows["class_id"].to_numpy(int)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy, labels = xyxy[keep], labels[keep]
    if len(xyxy) == 0:
        return []
    boxes, _scores, out_labels = weighted_boxes_fusion(
        [xyxy.tolist()], [[1.0] * len(xyxy)], [labels.tolist()], iou_thr=iou_thr, skip_box_thr=0.0
    )
    out = [
        Box(float(b[0] * width), float(b[1] * height), float(b[2] * width), float(b[3] * height), class_id=int(c))
        for b, c in zip(boxes, out_labels)
    ]
    return sorted(out, key=lambda b: (b.class_id, b.x0, b.y0))


def rescale_boxes(
    boxes: Iterable[Box], orig_size: tuple[int, int], stored_size: tuple[int, int]
) -> list[Box]:
    """Map boxes from original pixels (width, height) to the stored image's pixels, clipped."""
    ow, oh = orig_size
    sw, sh = stored_size
    fx, fy = sw / ow, sh / oh
    out = []
    for b in boxes:
        x0, x1 = np.clip([b.x0 * fx, b.x1 * fx], 0, sw)
        y0, y1 = np.clip([b.y0 * fy, b.y1 * fy], 0, sh)
        if x1 > x0 and y1 > y0:
            out.append(Box(float(x0), float(y0), float(x1), float(y1), class_id=b.class_id))
    return out


def yolo_lines(boxes: Iterable[Box], size: tuple[int, int]) -> list[str]:
    """Normalised ``class cx cy w h`` lines for boxes in pixels of an image of ``size`` (w, h)."""
    w, h = size
    lines = []
    for b in boxes:
        cx, cy = (b.x0 + b.x1) / 2 / w, (b.y0 + b.y1) / 2 / h
        bw, bh = (b.x1 - b.x0) / w, (b.y1 - b.y0) / h
        lines.append(f"{b.class_id} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    return lines


def hash_split(image_id: str) -> str:
    """Deterministic 80/10/10 split by image id (the rule TBX11K's shared split uses)."""
    d = int(hashlib.sha1(image_id.encode()).hexdigest(), 16) % 10
    return "test" if d == 0 else ("val" if d == 1 else "train")


# --- writing ----------------------------------------------------------------------------------


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # filesystems without symlinks
        shutil.copy2(src, dst)


def _write_label(out: Path, split: str, image_id: str, lines: list[str]) -> None:
    p = out / "labels" / split / f"{image_id}.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + ("\n" if lines else ""))


def _reset(out: Path) -> None:
    for sub in ("images", "labels"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)


def write_data_yaml(out: Path, names: tuple[str, ...] = settings.DETECTOR_CLASSES) -> Path:
    """The ultralytics dataset file (absolute paths, so it works from any working directory)."""
    out = out.resolve()
    lines = [f"path: {out}", "train: images/train", "val: images/val", "test: images/test", "names:"]
    lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    p = out / "data.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


class _Summary:
    def __init__(self) -> None:
        self.images: dict[str, Counter] = defaultdict(Counter)  # split -> class -> images
        self.boxes: dict[str, Counter] = defaultdict(Counter)  # split -> class -> boxes
        self.n_images: Counter = Counter()
        self.n_background: Counter = Counter()
        self.sources: dict[str, Counter] = defaultdict(Counter)

    def add(self, split: str, source: str, boxes: list[Box]) -> None:
        self.n_images[split] += 1
        self.sources[split][source] += 1
        if not boxes:
            self.n_background[split] += 1
        for c in {b.class_id for b in boxes}:
            self.images[split][settings.DETECTOR_CLASSES[c]] += 1
        for b in boxes:
            self.boxes[split][settings.DETECTOR_CLASSES[b.class_id]] += 1

    def to_dict(self) -> dict:
        return {
            split: {
                "images": int(self.n_images[split]),
                "background_images": int(self.n_background[split]),
                "images_by_source": dict(self.sources[split]),
                "boxes_per_class": {n: int(self.boxes[split][n]) for n in settings.DETECTOR_CLASSES},
                "images_per_class": {n: int(self.images[split][n]) for n in settings.DETECTOR_CLASSES},
            }
            for split in SPLITS
        }


def _shared_images(src_dir: Path) -> Iterator[tuple[str, pd.DataFrame, Path, str, tuple[int, int], tuple[int, int]]]:
    """Per image of a shared set's labels.csv whose JPEG exists: id, its rows, path, split, original and stored size.

    Box coordinates in these tables are in original pixels, so both sizes travel together.
    """
    df = pd.read_csv(src_dir / "labels.csv")
    for image_id, rows in df.groupby("image_id", sort=True):
        src = src_dir / "images" / f"{image_id}.jpg"
        if not src.is_file():
            continue
        orig = (int(rows["orig_width"].iloc[0]), int(rows["orig_height"].iloc[0]))
        yield str(image_id), rows, src, str(rows["split"].iloc[0]), orig, _image_size(src)


def _add_tbx11k(out: Path, tbx_dir: Path, summary: _Summary) -> None:
    for image_id, rows, src, split, orig, stored in _shared_images(tbx_dir):
        boxes = [
            Box(r.x_min, r.y_min, r.x_max, r.y_max, class_id=TB_SOURCE_TO_ID[r.source_class])
            for r in rows.itertuples()
            if r.source_class in TB_SOURCE_TO_ID
        ]
        boxes = rescale_boxes(boxes, orig, stored)
        _link(src, out / "images" / split / f"{image_id}.jpg")
        _write_label(out, split, str(image_id), yolo_lines(boxes, stored))
        summary.add(split, "tbx11k", boxes)


def _finish(out: Path, summary: _Summary, source: str) -> dict:
    write_data_yaml(out)
    info = {"source": source, "classes": list(settings.DETECTOR_CLASSES), "splits": summary.to_dict()}
    (out / "summary.json").write_text(json.dumps(info, indent=2))
    for cache in (out / "labels").glob("*.cache"):  # stale ultralytics label caches
        cache.unlink()
    return info


def prepare_shared(
    out: Path = settings.DETECTOR_DATA_DIR,
    vinbig_dir: Path = settings.VINBIG_DIR,
    tbx_dir: Path | None = settings.TBX11K_DIR,
) -> dict:
    """Dataset from the shared VinBigData subset (given split) plus TBX11K (given split)."""
    out = Path(out)
    _reset(out)
    summary = _Summary()
    for image_id, rows, src, split, orig, stored in _shared_images(vinbig_dir):
        boxes = rescale_boxes(fuse_radiologists(rows, *orig), orig, stored)
        _link(src, out / "images" / split / f"{image_id}.jpg")
        _write_label(out, split, str(image_id), yolo_lines(boxes, stored))
        summary.add(split, "vinbigdata", boxes)
    if tbx_dir is not None and (Path(tbx_dir) / "labels.csv").is_file():
        _add_tbx11k(out, Path(tbx_dir), summary)
    return _finish(out, summary, f"shared:{vinbig_dir}")


def _kaggle_dicom(kaggle_dir: Path, image_id: str) -> Path | None:
    for sub in ("train", "."):
        for ext in (".dicom", ".dcm"):
            p = kaggle_dir / sub / f"{image_id}{ext}"
            if p.is_file():
                return p
    return None


def _convert_dicom(args: tuple[str, str, str, int]) -> tuple[str, tuple[int, int], tuple[int, int]] | None:
    """DICOM -> 8-bit JPEG (long side ``side``) via cxr_core.io; returns (id, original, stored) sizes."""
    import cv2

    from cxr_core.io import ImageLoadError, load_image

    image_id, src, dst, side = args
    try:
        img = load_image(src)
    except ImageLoadError:
        return None
    orig = img.meta.original_size
    px = img.to_uint8()
    h, w = px.shape
    scale = side / max(h, w)
    if scale < 1:
        px = cv2.resize(px, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(dst, px, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        return None
    return image_id, orig, (px.shape[1], px.shape[0])


def prepare_kaggle(
    kaggle_dir: Path,
    out: Path = settings.DETECTOR_DATA_DIR,
    tbx_dir: Path | None = settings.TBX11K_DIR,
    side: int = 512,
    workers: int = 1,
    limit: int | None = None,
) -> dict:
    """Dataset from the full Kaggle download: ``train.csv`` + ``train/<image_id>.dicom``.

    DICOMs are decoded with cxr_core.io.load_image (VOI LUT applied) and written as JPEGs with long
    side ``side`` (already converted images are reused, so an interrupted run can be restarted).
    The split is a ``split`` column of train.csv if present, otherwise a deterministic 80/10/10 hash
    split by image id. TBX11K is added as for the shared data.
    """
    kaggle_dir, out = Path(kaggle_dir), Path(out)
    df = pd.read_csv(kaggle_dir / "train.csv")
    ids = sorted(df["image_id"].astype(str).unique())
    if limit:
        ids = ids[:limit]
    _reset(out)
    jpg_dir = out / "kaggle_jpg"  # converted images (kept between runs)
    jobs, sizes = [], {}
    for image_id in ids:
        src = _kaggle_dicom(kaggle_dir, image_id)
        if src is None:
            continue
        dst = jpg_dir / f"{image_id}.jpg"
        meta = jpg_dir / f"{image_id}.json"
        if dst.is_file() and meta.is_file():
            m = json.loads(meta.read_text())
            sizes[image_id] = (tuple(m["original"]), tuple(m["stored"]))
        else:
            jobs.append((image_id, str(src), str(dst), side))
    if workers > 1 and len(jobs) > 1:
        from multiprocessing import Pool

        with Pool(workers) as pool:
            results = pool.map(_convert_dicom, jobs, chunksize=8)
    else:
        results = [_convert_dicom(j) for j in jobs]
    for r in results:
        if r is None:
            continue
        image_id, orig, stored = r
        sizes[image_id] = (orig, stored)
        (jpg_dir / f"{image_id}.json").write_text(json.dumps({"original": orig, "stored": stored}))
    summary = _Summary()
    groups = dict(tuple(df.groupby(df["image_id"].astype(str))))
    for image_id in ids:
        if image_id not in sizes:
            continue
        rows = groups[image_id]
        orig, stored = sizes[image_id]
        split = str(rows["split"].iloc[0]) if "split" in rows else hash_split(image_id)
        boxes = rescale_boxes(fuse_radiologists(rows, *orig), orig, stored)
        _link(jpg_dir / f"{image_id}.jpg", out / "images" / split / f"{image_id}.jpg")
        _write_label(out, split, image_id, yolo_lines(boxes, stored))
        summary.add(split, "vinbigdata", boxes)
    if tbx_dir is not None and (Path(tbx_dir) / "labels.csv").is_file():
        _add_tbx11k(out, Path(tbx_dir), summary)
    return _finish(out, summary, f"kaggle:{kaggle_dir}")


def is_kaggle_layout(path: Path) -> bool:
    return (Path(path) / "train.csv").is_file()
