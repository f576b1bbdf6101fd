"""Evaluate the detector with ultralytics' own validator and metrics, at IoU 0.4 and 0.5.

The VinBigData competition scored mAP at IoU 0.4. ultralytics' ``DetectionValidator`` matches
predictions at every IoU in its ``iouv`` vector and ``ap_per_class``/``DetMetrics`` compute one AP
per class and IoU column; :class:`IoU40Validator` only swaps that vector for ``[0.4, 0.5]``, so
column 0 is AP@0.4 and column 1 AP@0.5 (no hand-written matching, NMS or AP code here).

Precision/recall/F1 are read from ultralytics' confidence curves (``p_curve``/``r_curve``/
``f1_curve``, 1000 points over confidence, at IoU 0.4) at the operating threshold, which is chosen
on the *val* split (best mean F1 over the validated classes) unless given.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from cxr_core import settings
from cxr_core.detect.predict import trained_imgsz, ultralytics_offline
from cxr_core.provenance import code_version

IOUS = (0.4, 0.5)


def _validator_cls():
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator

    class IoU40Validator(DetectionValidator):
        """ultralytics DetectionValidator whose IoU vector is (0.4, 0.5) instead of 0.5:0.95."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.iouv = torch.tensor(IOUS)
            self.niou = self.iouv.numel()

    return IoU40Validator


def _data_yaml(data: Path | None) -> Path:
    return Path(data or settings.DETECTOR_DATA_DIR / "data.yaml")


def run_validator(weights: Path, data: Path, split: str, imgsz: int, single_cls: bool = False):
    """ultralytics DetMetrics for ``split`` with AP columns at IoU 0.4 and 0.5."""
    import tempfile

    import torch

    YOLO = ultralytics_offline()
    torch.set_num_threads(max(1, settings.TORCH_THREADS))
    model = YOLO(str(weights), task="detect")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = model.val(
            validator=_validator_cls(), data=str(data), split=split, imgsz=imgsz, batch=8, conf=0.001,
            iou=0.6, device="cpu", workers=0, plots=False, save_json=False, verbose=False, half=False,
            single_cls=single_cls, project=tmp, name="val", exist_ok=True, rect=True,
        )
    return metrics, model.names


def match_predictions(
    pred_xyxy: np.ndarray,
    pred_cls: np.ndarray,
    true_xyxy: np.ndarray,
    true_cls: np.ndarray,
    ious: tuple[float, ...] = IOUS,
) -> np.ndarray:
    """(N, len(ious)) bool: which predictions are true positives at each IoU, matched exactly as the
    validator matches them (ultralytics ``box_iou`` + ``BaseValidator.match_predictions``: predictions
    in descending confidence order each claim the best unclaimed target of the same class).

    ``pred_xyxy`` must be sorted by descending confidence (``detect()`` returns them so). Because the
    matching is greedy in that order, the true positives above any threshold are the same as if only
    the boxes above it had been matched: one run at the lowest confidence serves every threshold.
    """
    from types import SimpleNamespace

    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import box_iou

    pred_xyxy = np.asarray(pred_xyxy, dtype=np.float32).reshape(-1, 4)
    true_xyxy = np.asarray(true_xyxy, dtype=np.float32).reshape(-1, 4)
    if not len(pred_xyxy) or not len(true_xyxy):
        return np.zeros((len(pred_xyxy), len(ious)), dtype=bool)
    iou = box_iou(torch.from_numpy(true_xyxy), torch.from_numpy(pred_xyxy))
    holder = SimpleNamespace(iouv=torch.tensor(ious))  # all match_predictions reads from the validator
    correct = BaseValidator.match_predictions(
        holder, torch.as_tensor(np.asarray(pred_cls)), torch.as_tensor(np.asarray(true_cls)), iou)
    return correct.cpu().numpy().astype(bool)


def _curve_at(curve: np.ndarray, conf: float) -> np.ndarray:
    """Value of each class' ultralytics confidence curve (1000 points on [0, 1]) at ``conf``."""
    idx = int(round(np.clip(conf, 0.0, 1.0) * (curve.shape[1] - 1)))
    return curve[:, idx]


def split_files(data: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of a split of an ultralytics data.yaml (folder or .txt list),
    with labels found the way ultralytics finds them (last /images/ -> /labels/)."""
    import yaml

    cfg = yaml.safe_load(Path(data).read_text())
    root = Path(cfg.get("path", Path(data).parent))
    src = Path(cfg[split])
    src = src if src.is_absolute() else root / src
    if src.is_file():
        imgs = [Path(x.strip()) for x in src.read_text().splitlines() if x.strip()]
    else:
        imgs = sorted(p for p in src.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
    out = []
    for img in imgs:
        a, b = "/images/", "/labels/"
        s = str(img)
        lbl = Path(b.join(s.rsplit(a, 1))).with_suffix(".txt")
        out.append((img, lbl))
    return out


def _classes_of(lbl: Path) -> list[int]:
    if not lbl.is_file():
        return []
    return [int(line.split()[0]) for line in lbl.read_text().splitlines() if line.strip()]


def _support(data: Path, split: str, nc: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Boxes and images per class in a split, counted from its YOLO label files."""
    boxes, images = np.zeros(nc, int), np.zeros(nc, int)
    files = split_files(data, split)
    for _img, lbl in files:
        cls = _classes_of(lbl)
        for c in cls:
            boxes[c] += 1
        for c in set(cls):
            images[c] += 1
    return boxes, images, len(files)


def choose_threshold(weights: Path, data: Path | None = None, imgsz: int | None = None) -> float:
    """Confidence maximising the mean F1 (IoU 0.4) over the validated classes on the val split."""
    data = _data_yaml(data)
    m, names = run_validator(weights, data, "val", imgsz or trained_imgsz(weights))
    box = m.box
    if not len(box.ap_class_index):
        return settings.DETECTOR_CONF
    boxes, _, _ = _support(data, "val", len(names))
    rows = [i for i, c in enumerate(box.ap_class_index) if boxes[c] >= settings.DETECTOR_MIN_SUPPORT]
    rows = rows or list(range(len(box.ap_class_index)))
    from ultralytics.utils.metrics import smooth

    f1 = smooth(np.asarray(box.f1_curve)[rows].mean(0), 0.1)  # as ap_per_class picks its max-F1 point
    x = np.asarray(box.px)
    best = int(np.argmax(f1))
    return float(round(x[best], 3))


def evaluate(
    weights: Path = settings.DETECTOR_WEIGHTS,
    split: str = "test",
    data: Path | None = None,
    conf: float | None = None,
    imgsz: int | None = None,
) -> dict:
    """Metrics JSON for ``split``: map40, map50, tb_ap40, per-class AP with support, P/R/F1."""
    data = _data_yaml(data)
    imgsz = imgsz or trained_imgsz(weights)
    threshold_source = "given"
    if conf is None:
        conf, threshold_source = choose_threshold(weights, data, imgsz), "best mean F1 on val"
    m, names = run_validator(weights, data, split, imgsz)
    nc = len(names)
    boxes, images, n_images = _support(data, split, nc)
    box = m.box
    idx = [int(c) for c in box.ap_class_index]
    all_ap = np.asarray(box.all_ap) if len(idx) else np.zeros((0, len(IOUS)))
    p = _curve_at(np.asarray(box.p_curve), conf) if len(idx) else np.zeros(0)
    r = _curve_at(np.asarray(box.r_curve), conf) if len(idx) else np.zeros(0)
    f1 = 2 * p * r / np.maximum(p + r, 1e-16)
    tb_ids = [i for i, n in names.items() if n in settings.TB_CLASSES]
    per_class = []
    for c in range(nc):
        row = {
            "class_id": c,
            "name": names[c],
            "dataset": "tbx11k" if c in tb_ids else "vinbigdata",
            "support_boxes": int(boxes[c]),
            "support_images": int(images[c]),
            "ap40": None,
            "ap50": None,
            "precision": None,
            "recall": None,
            "f1": None,
            "validated": bool(boxes[c] >= settings.DETECTOR_MIN_SUPPORT),
        }
        if c in idx:
            k = idx.index(c)
            row.update(
                ap40=float(all_ap[k, 0]), ap50=float(all_ap[k, 1]), precision=float(p[k]), recall=float(r[k]),
                f1=float(f1[k]),
            )
        per_class.append(row)
    present = [row for row in per_class if row["support_boxes"] > 0]
    validated = [row for row in present if row["validated"]]
    tb = [row for row in present if row["class_id"] in tb_ids]

    def _mean(rows, key):
        vals = [row[key] for row in rows if row[key] is not None]
        return float(np.mean(vals)) if vals else None

    out = {
        "split": split,
        "n_images": int(n_images),
        "n_boxes": int(boxes.sum()),
        "imgsz": int(imgsz),
        "iou_thresholds": list(IOUS),
        "map40": _mean(present, "ap40"),
        "map50": _mean(present, "ap50"),
        "map40_validated": _mean(validated, "ap40"),
        "tb_ap40": _mean(tb, "ap40"),
        "tb_ap50": _mean(tb, "ap50"),
        "threshold": float(conf),
        "threshold_source": threshold_source,
        "precision": _mean(present, "precision"),
        "recall": _mean(present, "recall"),
        "f1": _mean(present, "f1"),
        "classes_present": [row["name"] for row in present],
        "validated_classes": [row["name"] for row in validated],
        "min_support_for_validation": settings.DETECTOR_MIN_SUPPORT,
        "per_class": per_class,
        "notes": (
            "map40/map50 average AP over the classes with at least one box in this split (the VinBigData "
            "competition convention); precision/recall/F1 are at `threshold` (IoU 0.4), averaged over the "
            "same classes. Classes with fewer than min_support_for_validation boxes are not validated."
        ),
    }
    out["tb_lesion_ap40"] = _tb_agnostic_ap(weights, data, split, imgsz)
    return out


def _tb_agnostic_ap(weights: Path, data: Path, split: str, imgsz: int) -> float | None:
    """AP@0.4 for 'any TB lesion' (active/obsolete merged), on the split's TB images only."""
    import tempfile

    import yaml

    cfg = yaml.safe_load(Path(data).read_text())
    root = Path(cfg.get("path", Path(data).parent))
    tb_ids = {len(settings.VINBIG_CLASSES), len(settings.VINBIG_CLASSES) + 1}
    files = [str(img) for img, lbl in split_files(data, split) if tb_ids & set(_classes_of(lbl))]
    if not files:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "tb.txt"
        lst.write_text("\n".join(files) + "\n")
        sub = dict(cfg, path=str(root), val=str(lst), test=str(lst), train=str(lst))
        yml = Path(tmp) / "tb.yaml"
        yml.write_text(yaml.safe_dump(sub))
        m, _ = run_validator(weights, yml, split, imgsz, single_cls=True)
        for cache in Path(tmp).glob("*.cache"):
            cache.unlink()
    return float(np.asarray(m.box.all_ap)[:, 0].mean()) if len(m.box.ap_class_index) else None


# --- model card ------------------------------------------------------------------------------


def write_card(weights: Path, run_dir: Path, metrics_path: Path, out: Path) -> dict:
    """weights/detector.json: data counts, metrics, training details and plain-language limits.

    A measured ``operating_point`` already on the card at ``out`` (``detect operating-point``) is kept:
    it belongs to the same weights and is the app's default box threshold.
    """
    from cxr_core.detect.operating import limitation_text, operating_point
    from cxr_core.detect.train import run_summary

    try:
        previous = json.loads(Path(out).read_text()) if Path(out).is_file() else {}
    except (OSError, json.JSONDecodeError):
        previous = {}
    op = operating_point(previous)

    summary_path = settings.DETECTOR_DATA_DIR / "summary.json"
    data_summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    metrics = json.loads(Path(metrics_path).read_text()) if Path(metrics_path).is_file() else {}
    train_info = run_summary(Path(run_dir))
    splits = data_summary.get("splits", {})
    n_vin = {s: v.get("images_by_source", {}).get("vinbigdata", 0) for s, v in splits.items()}
    n_tb = {s: v.get("images_by_source", {}).get("tbx11k", 0) for s, v in splits.items()}
    card = {
        "name": "CXR abnormality detector (YOLOv5nu, ultralytics)",
        "status": "research preview - not validated for clinical use",
        "weights": Path(weights).name,
        "weights_bytes": Path(weights).stat().st_size if Path(weights).is_file() else None,
        "architecture": "YOLOv5nu (ultralytics 8.4 anchor-free head), ~2.5 M parameters",
        "initialisation": str(settings.YOLO_PRETRAINED.name)
        + ": backbone+neck from COCO YOLOv5n, detection head random",
        "classes": list(settings.DETECTOR_CLASSES),
        "validated_classes": metrics.get("validated_classes", []),
        "operating_threshold": metrics.get("threshold", settings.DETECTOR_CONF),
        "data": {
            "source": data_summary.get("source"),
            "vinbigdata_images_per_split": n_vin,
            "tbx11k_images_per_split": n_tb,
            "per_split": splits,
            "label_fusion": f"weighted boxes fusion of the radiologists' boxes per image and class "
            f"(ensemble_boxes, iou_thr={settings.DETECTOR_WBF_IOU})",
        },
        "training": {
            **train_info,
            "device": f"CPU (2-core machine, {train_info.get('torch_threads', 1)} torch thread(s))",
            "imgsz": train_info.get("imgsz", settings.DETECTOR_IMGSZ),
        },
        "metrics_test": {k: metrics.get(k) for k in (
            "n_images", "n_boxes", "map40", "map50", "map40_validated", "tb_ap40", "tb_ap50", "tb_lesion_ap40",
            "threshold", "precision", "recall", "f1")},
        "per_class_test": metrics.get("per_class", []),
        "date": _dt.date.today().isoformat(),
        "code_version": code_version(),
        "limitations": [
            f"It saw only {n_vin.get('train', 0)} VinBigData training images "
            f"({sum(n_vin.values())} in all splits, out of the 15,000 annotated ones): the 14 VinBigData "
            "classes are essentially untrained and their test support is a single image; treat any "
            "VinBigData box as unvalidated.",
            f"Tuberculosis boxes come from {sum(n_tb.values())} TBX11K TB-positive radiographs "
            f"({n_tb.get('train', 0)} for training); " + limitation_text(op),
            f"Trained for {train_info.get('epochs_completed')} epochs at {train_info.get('imgsz')} px on CPU "
            f"({(train_info.get('train_seconds') or 0) / 3600:.1f} h); a user with the full Kaggle download can "
            "retrain with `python -m cxr_core.detection prepare --kaggle DIR` then `train`.",
            "Research preview: not a medical device, not for diagnosis.",
        ],
        "licences": "VinDr-CXR/VinBigData research-only DUA; TBX11K research use; YOLOv5/ultralytics AGPL-3.0",
    }
    if op is not None:
        card["operating_point"] = op
    from cxr_core.detect.operating import dumps_card

    Path(out).write_text(dumps_card(card))
    return card
