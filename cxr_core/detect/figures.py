"""Data figures for the dashboard (weights/detector_figures.json); keys documented in docs/detector.md.

Everything except ``predicted_vs_actual`` is computed from the full VinBigData annotation table
(67,914 rows, 15,000 images, original pixel coordinates) and the image sizes table.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core import settings
from cxr_core.detect.prepare import NO_FINDING_ID

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
AREA_BINS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # relative box area edges
NO_FINDING = "No finding"


def load_annotations(vinbig_dir: Path = settings.VINBIG_DIR) -> pd.DataFrame:
    """All radiologist rows joined with original image sizes (width, height)."""
    ann = pd.read_csv(vinbig_dir / "annotations" / "vinbigdata-train.csv")
    sizes = pd.read_csv(vinbig_dir / "annotations" / "image_sizes.csv")[["image_id", "width", "height"]]
    return ann.merge(sizes, on="image_id", how="left")


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def label_distribution(ann: pd.DataFrame) -> dict:
    boxes = ann[ann["class_id"] != NO_FINDING_ID]
    out = {"class": [], "class_id": [], "boxes": [], "images": []}
    for cid, name in enumerate(settings.VINBIG_CLASSES):
        sub = boxes[boxes["class_id"] == cid]
        out["class"].append(name)
        out["class_id"].append(cid)
        out["boxes"].append(int(len(sub)))
        out["images"].append(int(sub["image_id"].nunique()))
    nf = ann[ann["class_id"] == NO_FINDING_ID]
    # "No finding": images where no radiologist drew any box
    abnormal = set(boxes["image_id"])
    out["class"].append(NO_FINDING)
    out["class_id"].append(NO_FINDING_ID)
    out["boxes"].append(0)
    out["images"].append(int(len(set(nf["image_id"]) - abnormal)))
    return out


def box_area(ann: pd.DataFrame) -> dict:
    b = ann[ann["class_id"] != NO_FINDING_ID].dropna(subset=["x_min"])
    rel = ((b["x_max"] - b["x_min"]) * (b["y_max"] - b["y_min"])) / (b["width"] * b["height"])
    b = b.assign(rel_area=rel.clip(lower=0))
    out = {"quantiles": list(QUANTILES), "bins": list(AREA_BINS), "per_class": {}}
    for cid, name in enumerate(settings.VINBIG_CLASSES):
        v = b.loc[b["class_id"] == cid, "rel_area"].to_numpy()
        hist = np.histogram(np.clip(v, 0, 1), bins=AREA_BINS)[0] if len(v) else np.zeros(len(AREA_BINS) - 1)
        out["per_class"][name] = {
            "n": int(len(v)),
            "mean": float(v.mean()) if len(v) else None,
            "quantile_values": [float(q) for q in np.quantile(v, QUANTILES)] if len(v) else None,
            "histogram": [int(x) for x in hist],
        }
    return out


def boxes_per_image(ann: pd.DataFrame, cap: int = 30) -> dict:
    b = ann[ann["class_id"] != NO_FINDING_ID]
    per_image = b.groupby("image_id").size()
    n_images = ann["image_id"].nunique()
    counts = np.concatenate([per_image.to_numpy(), np.zeros(n_images - len(per_image), int)])
    clipped = np.minimum(counts, cap)
    values, freq = np.unique(clipped, return_counts=True)
    return {
        "unit": "radiologist boxes per image (all readers together); last bin is cap or more",
        "cap": cap,
        "n_boxes": [int(v) for v in values],
        "n_images": [int(f) for f in freq],
        "mean": float(counts.mean()),
        "mean_abnormal": float(per_image.mean()),
        "readers_per_image": {
            str(k): int(v) for k, v in ann.groupby("image_id")["rad_id"].nunique().value_counts().sort_index().items()
        },
    }


def radiologist_agreement(ann: pd.DataFrame) -> dict:
    """Per class: for every image and pair of radiologists who both marked the class, the mean over
    each reader's boxes of the best IoU with the other reader's boxes (symmetrised); plus how often a
    class marked by one reader on an image was marked by more than one reader."""
    b = ann[ann["class_id"] != NO_FINDING_ID].dropna(subset=["x_min"])
    readers_per_image = ann.groupby("image_id")["rad_id"].nunique()
    out = {"class": [], "mean_pairwise_iou": [], "median_pairwise_iou": [], "n_reader_pairs": [],
           "frac_images_marked_by_2plus": [], "frac_images_marked_by_all": []}
    for cid, name in enumerate(settings.VINBIG_CLASSES):
        sub = b[b["class_id"] == cid]
        ious, multi, allr, n_img = [], 0, 0, 0
        for image_id, g in sub.groupby("image_id"):
            n_img += 1
            readers = {r: grp[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float) for r, grp in g.groupby("rad_id")}
            if len(readers) >= 2:
                multi += 1
            if len(readers) >= readers_per_image.get(image_id, 3):
                allr += 1
            keys = sorted(readers)
            for i in range(len(keys)):
                for j in range(i + 1, len(keys)):
                    m = _iou_matrix(readers[keys[i]], readers[keys[j]])
                    ious.append(0.5 * (m.max(1).mean() + m.max(0).mean()))
        out["class"].append(name)
        out["mean_pairwise_iou"].append(float(np.mean(ious)) if ious else None)
        out["median_pairwise_iou"].append(float(np.median(ious)) if ious else None)
        out["n_reader_pairs"].append(int(len(ious)))
        out["frac_images_marked_by_2plus"].append(float(multi / n_img) if n_img else None)
        out["frac_images_marked_by_all"].append(float(allr / n_img) if n_img else None)
    nf_images = ann.groupby("image_id")["class_id"].apply(lambda s: (s == NO_FINDING_ID).all())
    out["no_finding_unanimous_images"] = int(nf_images.sum())
    return out


def tbx11k_summary(tbx_dir: Path = settings.TBX11K_DIR) -> dict | None:
    p = Path(tbx_dir) / "labels.csv"
    if not p.is_file():
        return None
    df = pd.read_csv(p)
    rel = (df["x_max"] - df["x_min"]) * (df["y_max"] - df["y_min"]) / (df["orig_width"] * df["orig_height"])
    out = {"class": [], "boxes": [], "images": [], "area_quantile_values": []}
    for src, name in (("ActiveTuberculosis", settings.TB_CLASSES[0]),
                      ("ObsoletePulmonaryTuberculosis", settings.TB_CLASSES[1])):
        m = df["source_class"] == src
        out["class"].append(name)
        out["boxes"].append(int(m.sum()))
        out["images"].append(int(df.loc[m, "image_id"].nunique()))
        out["area_quantile_values"].append([float(q) for q in np.quantile(rel[m], QUANTILES)] if m.any() else None)
    out["quantiles"] = list(QUANTILES)
    out["n_images"] = int(df["image_id"].nunique())
    return out


def predicted_vs_actual(weights: Path, split: str = "test", data: Path | None = None) -> dict | None:
    """Boxes per class: ground truth vs predictions at the app's default threshold (the card's operating point)."""
    import torch

    from cxr_core.detect.predict import default_threshold, load_detector, trained_imgsz
    from cxr_core.detect.val import _classes_of, split_files

    data = Path(data or settings.DETECTOR_DATA_DIR / "data.yaml")
    if not Path(weights).is_file() or not data.is_file():
        return None
    card_path = Path(weights).with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    conf = default_threshold(card)  # the app's default: the card's operating point
    torch.set_num_threads(max(1, settings.TORCH_THREADS))
    model, imgsz = load_detector(weights), trained_imgsz(weights)
    names = model.names
    actual, predicted = np.zeros(len(names), int), np.zeros(len(names), int)
    files = split_files(data, split)
    for img, lbl in files:
        for c in _classes_of(lbl):
            actual[c] += 1
        res = model.predict(str(img), imgsz=imgsz, conf=conf, device="cpu", verbose=False)[0]
        for c in res.boxes.cls.cpu().numpy().astype(int):
            predicted[c] += 1
    return {
        "split": split,
        "n_images": len(files),
        "threshold": conf,
        "class": [names[i] for i in range(len(names))],
        "actual_boxes": [int(x) for x in actual],
        "predicted_boxes": [int(x) for x in predicted],
    }


def compute_figures(
    weights: Path | None = settings.DETECTOR_WEIGHTS,
    split: str = "test",
    vinbig_dir: Path = settings.VINBIG_DIR,
) -> dict:
    ann = load_annotations(vinbig_dir)
    return {
        "source": "VinBigData vinbigdata-train.csv (all radiologist boxes) + image_sizes.csv",
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "n_rows": int(len(ann)),
        "n_images": int(ann["image_id"].nunique()),
        "n_boxes": int((ann["class_id"] != NO_FINDING_ID).sum()),
        "n_radiologists": int(ann["rad_id"].nunique()),
        "label_distribution": label_distribution(ann),
        "box_area": box_area(ann),
        "boxes_per_image": boxes_per_image(ann),
        "radiologist_agreement": radiologist_agreement(ann),
        "tbx11k": tbx11k_summary(),
        "predicted_vs_actual": predicted_vs_actual(weights, split) if weights else None,
    }
