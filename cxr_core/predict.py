"""Predict single images or whole folders (a worklist), one row per image.

    python -m cxr_core.predict image.png other.dcm folder/ --model vbreathnet --csv out.csv
    python -m cxr_core.predict image.png --cam overlay.png

Each row carries the calibrated probabilities, the predicted class, the quality verdict and
whether the model abstained (low confidence, failed quality, or a call outside the patient groups the
model was trained on, when the age group is known from --age-group or the DICOM header), exactly as
the app shows them.
Files that cannot be read get a row with the error message instead of stopping the worklist.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm import tqdm

from cxr_core import settings
from cxr_core.classify import predict
from cxr_core.io import ImageLoadError, load_image
from cxr_core.models import ModelUnavailableError, load_classifier
from cxr_core.quality import assess

IMAGE_SUFFIXES = {"." + t for t in settings.UPLOAD_TYPES}


def iter_inputs(paths: Sequence[Path]) -> Iterator[Path]:
    """Files as given, and image files inside folders (recursively, sorted)."""
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def predict_row(path: Path, model: str, age_group: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"file": str(path)}
    try:
        image = load_image(path)
    except ImageLoadError as exc:
        return row | {"error": str(exc)}
    quality = assess(image)
    pred = predict(image, model, quality=quality, age_group=age_group)
    row |= {f"p_{c}": round(pred.probabilities[c], 4) for c in settings.CLASSES}
    row |= {
        "predicted": pred.predicted,
        "confidence": round(pred.confidence, 4),
        "abstained": pred.abstained,
        "quality": quality.verdict,
        "age_group": pred.age_group or "",
        "reasons": " | ".join(pred.reasons),
        "error": "",
    }
    return row


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxr_core.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    ap.add_argument("--model", default=settings.DEFAULT_CLASSIFIER, choices=settings.CLASSIFIERS)
    ap.add_argument("--csv", type=Path, default=None, help="write all rows to this CSV")
    ap.add_argument("--age-group", default=None, choices=settings.AGE_GROUPS,
                    help="patients' age group, for every file (default: the DICOM PatientAge where present); "
                    "calls for a group the model never saw with that class are abstained")
    ap.add_argument("--cam", type=Path, default=None, help="write a Grad-CAM overlay PNG (single image only)")
    ap.add_argument("--cam-method", default="gradcam")
    ap.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        load_classifier(args.model)
    except ModelUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 2
    files = list(iter_inputs(args.paths))
    if not files:
        print("No image files found.", file=sys.stderr)
        return 2
    if args.cam and len(files) != 1:
        print("--cam needs exactly one image.", file=sys.stderr)
        return 2
    rows = [predict_row(f, args.model, args.age_group)
            for f in tqdm(files, desc="predict", unit="image", disable=len(files) < 2, file=sys.stderr, mininterval=5)]
    columns = ["file", *[f"p_{c}" for c in settings.CLASSES], "predicted", "confidence", "abstained", "quality", "age_group", "reasons", "error"]
    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if args.csv:
            out.close()
    if args.cam and not rows[0].get("error"):
        from cxr_core.explain import explain, overlay, save_overlay

        image = load_image(files[0])
        save_overlay(args.cam, overlay(image, explain(args.model, image, method=args.cam_method)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
