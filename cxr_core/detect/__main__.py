"""Command line: ``python -m cxr_core.detect {prepare,train,evaluate,figures,card,detect,operating-point}`` (also ``python -m cxr_core detect MODE`` and the older ``python -m cxr_core.detection``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxr_core import settings


def _prepare(a) -> None:
    from cxr_core.detect import prepare as P

    tbx = None if a.no_tb else Path(a.tbx11k)
    if a.kaggle:
        info = P.prepare_kaggle(Path(a.kaggle), Path(a.out), tbx_dir=tbx, side=a.side, workers=a.workers,
                                limit=a.limit)
    else:
        info = P.prepare_shared(Path(a.out), Path(a.vinbig), tbx_dir=tbx)
    for split, s in info["splits"].items():
        boxes = sum(s["boxes_per_class"].values())
        print(f"{split}: {s['images']} images ({s['background_images']} background), {boxes} boxes")
    print(f"dataset written to {Path(a.out) / 'data.yaml'}")


def _train(a) -> None:
    from cxr_core.detect import train as T

    over = dict(epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, time=a.time, data=a.data, model=a.model,
                name=a.name, fraction=a.fraction)
    rdir = T.train(Path(a.config) if a.config else None, resume=a.resume, threads=a.threads, **over)
    if not a.no_export:
        dest = T.export(rdir, Path(a.weights), data=Path(a.data) if a.data else None)
        print(f"weights exported to {dest}")


def _export(a) -> None:
    from cxr_core.detect import train as T

    dest = T.export(Path(a.run), Path(a.weights), select=not a.no_select)
    print(f"weights exported to {dest}")


def _evaluate(a) -> None:
    from cxr_core.detect import val as E

    m = E.evaluate(Path(a.weights), split=a.split, data=Path(a.data) if a.data else None, conf=a.conf,
                   imgsz=a.imgsz)
    text = json.dumps(m, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    print(json.dumps({k: m[k] for k in ("split", "n_images", "map40", "map50", "tb_ap40")}, indent=2))


def _figures(a) -> None:
    from cxr_core.detect import figures as F

    fig = F.compute_figures(weights=None if a.no_predictions else Path(a.weights), split=a.split)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(fig, indent=1) + "\n")
    print(f"figures written to {a.out}")


def _card(a) -> None:
    from cxr_core.detect import val as E

    card = E.write_card(Path(a.weights), Path(a.run), Path(a.metrics), Path(a.out))
    print(json.dumps({k: card[k] for k in ("metrics_test", "validated_classes")}, indent=1)[:2000])


def _detect(a) -> None:
    from cxr_core.detect import detect, draw_boxes
    from cxr_core.io import load_image

    img = load_image(a.image)
    boxes = detect(img, conf=a.conf)
    for b in boxes:
        print(json.dumps(b.__dict__))
    if a.draw:
        from PIL import Image

        g = img.to_uint8()
        rgb = draw_boxes(
            __import__("numpy").stack([g] * 3, -1), boxes,
            scale=(img.width / img.meta.original_size[0], img.height / img.meta.original_size[1]),
        )
        Image.fromarray(rgb).save(a.draw)


def _operating_point(a) -> int:
    import shlex

    from cxr_core.detect import operating as O

    weights = Path(a.weights)
    card_path = Path(a.card)
    if not weights.is_file():
        raise SystemExit(f"No detector weights at {weights}.")
    previous = None
    if card_path.is_file():
        previous = json.loads(card_path.read_text()).get("operating_threshold")
    args = [x for x in (a.argv or []) if x != "operating-point"]
    command = " ".join([O.COMMAND, *(shlex.quote(x) for x in args)])
    try:
        result = O.study(weights, splits=tuple(a.splits), max_per_group=a.max_per_group, seed=a.seed,
                         fp_target=a.fp_target, precision_target=a.precision_target,
                         manifest=Path(a.manifest) if a.manifest else None, tbx_dir=Path(a.tbx11k),
                         compare_to=previous, progress=not a.no_progress, command=command)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    if not a.no_card:
        O.write_to_card(result, card_path)
        print(f"operating_point written to {card_path}", file=sys.stderr)
    first = result["chosen_on"]
    print(json.dumps({k: result[k] for k in ("threshold", "targets_met", "note", "targets")}
                     | {first: {k: v for k, v in result[first].items()}}, indent=1))
    print(result["meaning"])
    return 0 if result["fp_target_met"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr_core.detect", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("prepare", help="build the YOLO dataset under cache/")
    s.add_argument("--out", default=str(settings.DETECTOR_DATA_DIR))
    s.add_argument("--vinbig", default=str(settings.VINBIG_DIR), help="shared subset (labels.csv + images/)")
    s.add_argument("--kaggle", default=None, help="full Kaggle download: folder with train.csv + train/*.dicom")
    s.add_argument("--tbx11k", default=str(settings.TBX11K_DIR))
    s.add_argument("--no-tb", action="store_true", help="leave TBX11K out")
    s.add_argument("--side", type=int, default=512, help="long side of converted Kaggle JPEGs")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--limit", type=int, default=None, help="only the first N Kaggle images")
    s.set_defaults(func=_prepare)

    s = sub.add_parser("train", help="fine-tune from the pretrained checkpoint (CPU, resumable)")
    s.add_argument("--config", default=None, help="YAML of ultralytics train args on top of cxr_core/cfg/detect.yaml; unknown keys refused")
    s.add_argument("--data", default=None)
    s.add_argument("--model", default=None)
    s.add_argument("--name", default=None)
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--time", type=float, default=None, help="hours; ultralytics fits the epochs to it")
    s.add_argument("--imgsz", type=int, default=None)
    s.add_argument("--batch", type=int, default=None)
    s.add_argument("--fraction", type=float, default=None)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--resume", action="store_true")
    s.add_argument("--weights", default=str(settings.DETECTOR_WEIGHTS), help="export destination")
    s.add_argument("--no-export", action="store_true")
    s.set_defaults(func=_train)

    s = sub.add_parser("export", help="copy the run's checkpoint (best val TB AP of best/last) to weights/")
    s.add_argument("--run", default=str(settings.CACHE_DIR / "detection" / "runs" / "detector"))
    s.add_argument("--weights", default=str(settings.DETECTOR_WEIGHTS))
    s.add_argument("--no-select", action="store_true", help="take ultralytics' best.pt as is")
    s.set_defaults(func=_export)

    s = sub.add_parser("evaluate", help="mAP@0.4/0.5, per-class AP, P/R/F1 on a split")
    s.add_argument("--weights", default=str(settings.DETECTOR_WEIGHTS))
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--data", default=None)
    s.add_argument("--conf", type=float, default=None, help="operating threshold (default: best F1 on val)")
    s.add_argument("--imgsz", type=int, default=None)
    s.add_argument("--out", default=None)
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("figures", help="dataset / prediction figures JSON for the dashboard")
    s.add_argument("--out", default=str(settings.WEIGHTS_DIR / "detector_figures.json"))
    s.add_argument("--weights", default=str(settings.DETECTOR_WEIGHTS))
    s.add_argument("--split", default="test")
    s.add_argument("--no-predictions", action="store_true")
    s.set_defaults(func=_figures)

    s = sub.add_parser("card", help="write weights/detector.json (model card)")
    s.add_argument("--weights", default=str(settings.DETECTOR_WEIGHTS))
    s.add_argument("--run", default=str(settings.CACHE_DIR / "detection" / "runs" / "detector"))
    s.add_argument("--metrics", default=str(settings.DETECTOR_METRICS))
    s.add_argument("--out", default=str(settings.DETECTOR_CARD))
    s.set_defaults(func=_card)

    s = sub.add_parser("detect", help="run the detector on one image")
    s.add_argument("image")
    s.add_argument("--conf", type=float, default=settings.DETECTOR_CONF)
    s.add_argument("--draw", default=None, help="write an annotated PNG here")
    s.set_defaults(func=_detect)

    s = sub.add_parser(
        "operating-point",
        help="TB box threshold from boxes on cxr3 Normal films and TB precision on the val TB films; writes the card",
        description="Runs the shipped detector as the app does (once at settings.DETECTOR_MIN_CONF, original pixels) "
        "on cxr3 films labelled Normal (adult and paediatric, a seeded sample per group) and on the TBX11K TB films "
        "of each split, then picks the lowest threshold whose TB false positives per Normal film (worst age group) "
        "and TB precision at IoU 0.5 meet the targets on the first split. The result goes into the detector card "
        "as `operating_point` (the app's default box threshold). Exit 1 when even the false-positive target "
        "cannot be met.",
    )
    s.add_argument("--weights", default=str(settings.DETECTOR_WEIGHTS))
    s.add_argument("--card", default=str(settings.DETECTOR_CARD), help="detector card to add operating_point to")
    s.add_argument("--no-card", action="store_true", help="do not write the card (print / --out only)")
    s.add_argument("--out", default=None, help="also write the result JSON here")
    s.add_argument("--splits", nargs="+", default=["val", "test"], choices=["val", "test"],
                   help="the first chooses the threshold, the others are reported at it")
    s.add_argument("--max-per-group", type=int, default=150, help="Normal films per split and age group (seeded sample)")
    s.add_argument("--seed", type=int, default=settings.SEED)
    s.add_argument("--fp-target", type=float, default=settings.DETECTOR_TARGET_FP_PER_NORMAL_FILM,
                   help="most TB boxes per Normal film allowed (worst age group)")
    s.add_argument("--precision-target", type=float, default=settings.DETECTOR_TARGET_PRECISION,
                   help="least TB precision (IoU 0.5) on the TB films")
    s.add_argument("--manifest", default=None, help="cxr3 manifest (default settings.CXR3_MANIFEST)")
    s.add_argument("--tbx11k", default=str(settings.TBX11K_DIR))
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_operating_point)

    a = p.parse_args(argv)
    a.argv = list(argv if argv is not None else sys.argv[1:])
    return int(a.func(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
