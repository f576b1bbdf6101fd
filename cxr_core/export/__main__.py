"""Export a trained classifier to ONNX (and int8), or the detector, with a checked card beside each file.

    python -m cxr_core.export --model vbreathnet --int8              # weights/onnx/vbreathnet{,.int8}.onnx
    python -m cxr_core.export --model mobilenet_v2 --out cache/onnx  # a baseline, outside the repo
    python -m cxr_core.export --detector                             # weights/onnx/detector.onnx
    python -m cxr_core classify export --model vbreathnet --int8     # the same through the one CLI

Every file is checked with onnx.checker and against PyTorch on real cxr3 test films (all 618 by
default; --check-n for a seeded sample); the int8 model is calibrated on --calib-n validation
films (the test split is refused). Exit status: 0 done; 1 the fp32 export differs from PyTorch by
more than the tolerance; 2 could not run (missing weights or data, refused split).
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
from pathlib import Path
from typing import Sequence

from cxr_core import settings


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cxr_core.export", description=__doc__.split("\n\n")[0],
                                 epilog="See docs/export.md.")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", choices=settings.CLASSIFIERS, help="classifier to export")
    what.add_argument("--detector", action="store_true", help="export the YOLO detector (ultralytics' exporter)")
    ap.add_argument("--int8", action="store_true", help="also write NAME.int8.onnx (static int8, calibrated on val)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default weights/onnx)")
    ap.add_argument("--check-n", type=int, default=0,
                    help="test films for the output check (0 = the whole test split, default)")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the real-film check (no cxr3 on this machine); the card then has check: null")
    ap.add_argument("--calib-n", type=int, default=128, help="validation films for int8 calibration (default 128)")
    ap.add_argument("--calib-split", default="val", help="calibration split; anything but 'val' is refused")
    ap.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    ap.add_argument("--threads", type=int, default=settings.TORCH_THREADS, help="torch / ONNX Runtime threads")
    ap.add_argument("--seed", type=int, default=settings.SEED, help="seed of the film samples")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m cxr_core.export " + " ".join(shlex.quote(a) for a in argv)

    import numpy as np
    import torch

    from cxr_core.export import quantise, to_onnx
    from cxr_core.models import ModelUnavailableError, load_classifier

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, args.threads))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.detector:
        from cxr_core.export.detector import export_detector

        try:
            path, card = export_detector(out_dir=args.out, n_check=8, command=command, log=log)
        except (FileNotFoundError, ValueError) as exc:
            log(f"export: {exc}")
            return 2
        print(path)
        return 0

    if args.int8:
        try:  # refuse a wrong split before any work
            quantise.check_calibration_split(args.calib_split)
        except quantise.CalibrationSplitError as exc:
            log(f"export: {exc}")
            return 2
    try:
        clf = load_classifier(args.model)
    except ModelUnavailableError as exc:
        log(f"export: {exc}")
        return 2
    films = None
    if not args.no_check:
        try:
            films = to_onnx.load_films("test", clf.family, clf.input_size, n=args.check_n or None, seed=args.seed,
                                       progress=True)
        except FileNotFoundError as exc:
            log(f"export: {exc}; the output check needs real films (or pass --no-check).")
            return 2
    opset = args.opset or to_onnx.OPSET
    log(f"exporting {clf.spec.display_name} ({clf.input_size} px, T={clf.temperature:.4f})")
    try:
        path, card = to_onnx.export_classifier(clf, args.out, films=films, opset=opset, command=command, log=log)
    except ValueError as exc:  # size guard
        log(f"export: {exc}")
        return 2
    print(path)
    status = 0
    if card["check"] and card["check"]["max_abs_prob_diff"] > to_onnx.FP32_PROB_TOLERANCE:
        log(f"export: fp32 ONNX differs from PyTorch by {card['check']['max_abs_prob_diff']:.2e} in probability "
            f"(tolerance {to_onnx.FP32_PROB_TOLERANCE:g}).")
        status = 1
    if args.int8:
        try:
            calib = quantise.calibration_films(clf, args.calib_split, n=args.calib_n, seed=args.seed, progress=True)
        except FileNotFoundError as exc:
            log(f"export: {exc}; int8 calibration needs the cxr3 validation films.")
            return 2
        try:
            qpath, qcard = quantise.quantise_classifier(clf, path, args.out, calib=calib, films=films,
                                                        command=command, log=log)
        except ValueError as exc:
            log(f"export: {exc}")
            return 2
        print(qpath)
        note = (qcard.get("check") or {}).get("accuracy_note")
        if note:
            log(f"export: {note} (written on {to_onnx.card_path_for(qpath).name})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
