"""Command line: ``python -m cxr_core.detect {prepare,train,evaluate,figures,card,detect}`` (also ``python -m cxr_core detect MODE`` and the older ``python -m cxr_core.detection``)."""

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

    a = p.parse_args(argv)
    a.func(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
