"""Dice / IoU on a split (each image scored with its own mask convention) and CPU latency."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from cxr_core import settings
from cxr_core.timing import loadavg, time_each
from cxr_core.segment.data import _SOURCE_HEAD, load_split
from cxr_core.segment.model import Segmenter, load_segmenter, to_input
from cxr_core.segment.predict import clean_mask, lung_plausibility, segment


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


# --- evaluation / latency ------------------------------------------------------------------------


def measure_latency(seg: Segmenter, images: Iterable[np.ndarray], threads: int = settings.TORCH_THREADS, repeats: int = 1) -> dict:
    """Wall time of `segment` (letterbox + network + map back + plausibility) per image."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        imgs = list(images)
        times = time_each(lambda im: segment(im, seg), imgs * repeats, warmup=1)
    finally:
        torch.set_num_threads(old)
    arr, cpu = np.array(times) * 1000.0, np.array(times.cpu) * 1000.0
    load = loadavg()
    return {
        "threads": threads,
        "n": len(arr),
        "ms_mean": round(float(arr.mean()), 1),
        "ms_median": round(float(np.median(arr)), 1),
        "ms_p95": round(float(np.percentile(arr, 95)), 1),
        # CPU time summed over threads: on a busy shared machine wall time is mostly waiting, and
        # cpu_ms / threads is a lower bound of the wall time on an idle machine.
        "cpu_ms_median": round(float(np.median(cpu)), 1),
        "load_average_1min": load[0] if load else None,
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
