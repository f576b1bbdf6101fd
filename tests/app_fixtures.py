"""Fixture model cards, a fixture classifier checkpoint and test images for the app tests.

Everything is written into a test's tmp dir; settings.WEIGHTS_DIR is monkeypatched to point there.
The numbers in these cards are made up for the tests and must never be copied into weights/.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr_core import settings

CLASSES = list(settings.CLASSES)


def _metrics(acc: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    cm = (np.eye(3) * 180 + rng.integers(2, 20, (3, 3))).astype(int)
    fpr = [0.0, 0.05, 0.2, 1.0]
    return {
        "n": int(cm.sum()),
        "accuracy": acc,
        "macro_f1": acc - 0.01,
        "per_class": {c: {"precision": acc - 0.02 * i, "recall": acc - 0.01 * i, "f1": acc - 0.015 * i,
                          "support": int(cm[i].sum())} for i, c in enumerate(CLASSES)},
        "confusion_matrix": cm.tolist(),
        "roc_auc": {c: 0.95 - 0.01 * i for i, c in enumerate(CLASSES)},
        "roc_curve": {c: {"fpr": fpr, "tpr": [0.0, 0.7, 0.9, 1.0]} for c in CLASSES},
        "ece": 0.03,
        "mean_latency_ms": 12.5,
        "per_group": {
            "source": {
                "covid19_radiography_db": {"n": 300, "accuracy": acc, "macro_f1": acc - 0.02,
                                           "per_class": {"covid": {"recall": 0.95, "support": 206},
                                                         "normal": {"recall": 0.9, "support": 94}}},
                "kermany_paediatric": {"n": 318, "accuracy": acc - 0.03, "macro_f1": acc - 0.05,
                                       "per_class": {"normal": {"recall": 0.88, "support": 112},
                                                     "viral_pneumonia": {"recall": 0.91, "support": 206}}},
            },
            "age_group": {
                "adult": {"n": 300, "accuracy": acc, "macro_f1": acc - 0.02},
                "paediatric": {"n": 318, "accuracy": acc - 0.03, "macro_f1": acc - 0.05},
            },
        },
    }


def make_card(name: str, acc: float = 0.9, faithful: bool = True, params: int = 790_307) -> dict[str, Any]:
    display = {"vbreathnet": "V-BreathNet", "densenet121": "DenseNet121", "mobilenet_v2": "MobileNetV2",
               "vgg16": "VGG16"}[name]
    rel = {"bin_centers": [0.45, 0.75, 0.95], "accuracy": [0.4, 0.7, 0.97], "confidence": [0.45, 0.75, 0.95],
           "count": [10, 40, 500]}
    return {
        "name": name,
        "display_name": display,
        "input_size": 256 if name == "vbreathnet" else 224,
        "family": "vbreathnet" if name == "vbreathnet" else "imagenet",
        "pretrained": "" if name == "vbreathnet" else "imagenet",
        "faithful_to_paper": faithful,
        "deviations": [] if faithful else ["FIXTURE: trained for fewer epochs than the paper"],
        "params": {"total": params, "trainable": params, "keras_total": params + 1984},
        "paper": {"params_total": 792_291 if name == "vbreathnet" else None,
                  "test_accuracy": 0.97 if name == "vbreathnet" else None},
        "data": {"manifest_sha256": "ab" * 32, "split_sizes": {"train": 2889, "val": 618, "test": 618},
                 "quality_dropped": {}},
        "training": {"epochs": 3, "seconds": 600.0,
                     "history": [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.6 + 0.1 * e,
                                  "val_loss": 1.1 / e, "val_acc": 0.55 + 0.1 * e, "lr": 1e-3} for e in (1, 2, 3)]},
        "calibration": {"temperature": 1.3, "ece_before": 0.08, "ece_after": 0.03, "abstain_threshold": 0.7,
                        "reliability_before": rel, "reliability_after": rel},
        "metrics": {"val": _metrics(acc + 0.01, 1), "test": _metrics(acc, 2)},
        "latency_ms": 15.0,
        "date": "2026-11-23",
        "code_version": "fixture",
        "known_limits": ["FIXTURE LIMIT: viral pneumonia was only seen in children"],
    }


def write_cards(weights_dir: Path, names=("vbreathnet", "densenet121"), faithful=None) -> None:
    weights_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        f = True if faithful is None else faithful.get(name, True)
        (weights_dir / f"{name}.json").write_text(json.dumps(make_card(name, 0.9 - 0.02 * i, f)))


def write_vbreathnet_checkpoint(weights_dir: Path, temperature: float = 0.02, seed: int = 0) -> Path:
    """A randomly initialised V-BreathNet saved in the registry's checkpoint format.

    A tiny temperature makes the random logits peaky so the page shows a confident class
    (use temperature >= 10 to force an abstention).
    """
    import torch

    from cxr_core.models import build_model

    torch.manual_seed(seed)
    model, _ = build_model("vbreathnet")
    path = weights_dir / "vbreathnet.pt"
    torch.save({"state_dict": model.state_dict(), "input_size": settings.VBREATHNET_SIZE,
                "temperature": temperature, "mode": "fixture"}, path)
    return path


def chest_png_bytes(size: int = 256, seed: int = 0) -> bytes:
    """A PNG of the conftest chest phantom (made in the test, nothing downloaded)."""
    from conftest import chest_phantom, to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(chest_phantom(size, seed))).save(buf, "PNG")
    return buf.getvalue()


def real_cxr3_image() -> tuple[str, bytes] | None:
    """(filename, bytes) of one real cxr3 test image, or None when the shared data is absent."""
    from conftest import cxr3_rows

    rows = cxr3_rows("test", 1, seed=3)
    if not rows:
        return None
    path = settings.CXR3_DIR / rows[0]["path"]
    return path.name, path.read_bytes()


DETECTOR_CARD = {
    "name": "fixture detector",
    "validated_classes": ["Active tuberculosis"],
    "data": {"per_split": {"train": {"images": 647}, "val": {"images": 77}, "test": {"images": 87}},
             "vinbigdata_images_per_split": {"train": 10, "val": 1, "test": 1},
             "tbx11k_images_per_split": {"train": 637, "val": 76, "test": 86}},
    "limitations": ["FIXTURE: only a handful of VinBigData images"],
    "date": "2026-11-23",
    "code_version": "fixture",
}
DETECTOR_METRICS = {
    "split": "test", "n_images": 87, "map40": 0.31, "map50": 0.28, "tb_ap40": 0.42,
    "per_class": [
        {"class_id": 14, "name": "Active tuberculosis", "dataset": "tbx11k", "support_boxes": 90,
         "ap40": 0.5, "ap50": 0.45, "validated": True},
        {"class_id": 0, "name": "Aortic enlargement", "dataset": "vinbigdata", "support_boxes": 2,
         "ap40": 0.1, "ap50": 0.05, "validated": False},
        {"class_id": 2, "name": "Calcification", "dataset": "vinbigdata", "support_boxes": 0,
         "ap40": None, "ap50": None, "validated": False},
    ],
}
DETECTOR_FIGURES = {
    "n_images": 15000, "n_boxes": 36096,
    "label_distribution": {"class": ["Aortic enlargement", "Atelectasis"], "class_id": [0, 1],
                           "boxes": [7162, 279], "images": [3067, 186]},
    "box_area": {"quantiles": [0.05, 0.25, 0.5, 0.75, 0.95], "bins": [0, 1],
                 "per_class": {"Aortic enlargement": {"n": 7162, "quantile_values": [0.004, 0.006, 0.008, 0.01, 0.015]},
                               "Atelectasis": {"n": 279, "quantile_values": [0.01, 0.02, 0.04, 0.07, 0.12]}}},
    "boxes_per_image": {"n_boxes": [0, 1, 2], "n_images": [10606, 1000, 800]},
    "radiologist_agreement": {"class": ["Aortic enlargement"], "mean_pairwise_iou": [0.7],
                              "median_pairwise_iou": [0.72], "n_reader_pairs": [100],
                              "frac_images_marked_by_2plus": [0.8], "frac_images_marked_by_all": [0.6]},
    "tbx11k": {"class": ["Active tuberculosis", "Obsolete tuberculosis"], "boxes": [972, 239], "images": [660, 169],
               "area_quantile_values": [[0.01, 0.02, 0.03, 0.05, 0.09], [0.005, 0.01, 0.02, 0.03, 0.05]],
               "n_images": 799},
    "predicted_vs_actual": {"split": "test", "n_images": 87, "threshold": 0.25,
                            "class": ["Active tuberculosis", "Aortic enlargement"],
                            "actual_boxes": [90, 2], "predicted_boxes": [80, 0]},
}


def write_detector_files(weights_dir: Path) -> None:
    weights_dir.mkdir(parents=True, exist_ok=True)
    (weights_dir / "detector.json").write_text(json.dumps(DETECTOR_CARD))
    (weights_dir / "detector_metrics.json").write_text(json.dumps(DETECTOR_METRICS))
    (weights_dir / "detector_figures.json").write_text(json.dumps(DETECTOR_FIGURES))


def page_weights(tmp_path: Path, monkeypatch: Any, copy_ood: bool):
    """Generator for a fixture: a tmp weights dir with the fixture V-BreathNet checkpoint and card,
    optionally the real not-a-CXR statistics; model caches cleared before and after."""
    import shutil

    import streamlit as st

    from cxr_core import models, ood

    d = tmp_path / "weights"
    d.mkdir()
    if copy_ood and ood.weights_file().is_file():
        shutil.copy(ood.weights_file(), d / "ood.npz")
    monkeypatch.setattr(settings, "WEIGHTS_DIR", d)
    monkeypatch.setattr(settings, "DETECTOR_WEIGHTS", d / "detector.pt")
    monkeypatch.setattr(settings, "LUNGSEG_WEIGHTS", d / "lungseg.pt")
    write_cards(d, ("vbreathnet",))
    write_vbreathnet_checkpoint(d)
    models.load_classifier.cache_clear()
    st.cache_resource.clear()
    yield d
    models.load_classifier.cache_clear()
    st.cache_resource.clear()
