"""Predict single images or whole folders (a worklist), one row per image.

    python -m cxr_core.predict image.png other.dcm folder/ --model vbreathnet --csv out.csv
    python -m cxr_core.predict image.png --cam overlay.png
    python -m cxr_core.predict folder/ --backend onnx-int8 --csv out.csv   # ONNX Runtime (docs/export.md)

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

from cxr_core import pipeline, settings
from cxr_core.export import BACKENDS
from cxr_core.io import ImageLoadError
from cxr_core.models import ModelUnavailableError

IMAGE_SUFFIXES = {"." + t for t in settings.UPLOAD_TYPES}


def iter_inputs(paths: Sequence[Path]) -> Iterator[Path]:
    """Files as given, and image files inside folders (recursively, sorted)."""
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def analyse_path(path: Path, model: Any, age_group: str | None = None) -> tuple[dict[str, Any], pipeline.Analysis | None]:
    """(CSV row, analysis) for one file via `pipeline.analyse`, as the app runs it; an unreadable
    file gives a row with the reason and no analysis. `model`: a registry name or a loaded classifier."""
    try:
        analysis = pipeline.analyse(path, classifier=model, age_group=age_group)
    except ImageLoadError as exc:
        return {"file": str(path), "error": str(exc)}, None
    return {"file": str(path)} | analysis.row(), analysis


def predict_row(path: Path, model: str, age_group: str | None = None) -> dict[str, Any]:
    """One CSV row for one file (see `analyse_path`)."""
    return analyse_path(path, model, age_group)[0]


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
    ap.add_argument("--backend", default="torch", choices=BACKENDS,
                    help="run the classifier in PyTorch (default) or ONNX Runtime fp32 / int8 (weights/onnx, "
                    "see docs/export.md); --cam heatmaps are always computed by PyTorch")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from cxr_core.export.backend import load  # onnxruntime is imported only for an ONNX backend

        clf = load(args.model, args.backend, threads=args.threads)
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
    rows, first = [], None
    for f in tqdm(files, desc="predict", unit="image", disable=len(files) < 2, file=sys.stderr, mininterval=5):
        row, analysis = analyse_path(f, args.model if args.backend == "torch" else clf, args.age_group)
        rows.append(row)
        first = first or analysis  # kept only for --cam (single image); a worklist is not held in memory
    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=pipeline.row_columns(clf.classes), restval="")
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if args.csv:
            out.close()
    if args.cam and first is not None:
        from cxr_core.classify.explain import overlay, save_overlay

        save_overlay(args.cam, overlay(first.image, first.heatmap(method=args.cam_method)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
