"""`python -m cxr_core segment MODE` / `python -m cxr_core.segment` / `python -m cxr_core.lungs`: train, evaluate, card, predict, crop-boxes."""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from cxr_core import cfg, settings
from cxr_core.segment.card import write_card
from cxr_core.segment.crop import crop_boxes
from cxr_core.segment.model import load_segmenter
from cxr_core.segment.predict import chest_box, outline_rgba, segment
from cxr_core.segment.train import train
from cxr_core.segment.val import evaluate


# --- CLI ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr_core.segment", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    # defaults from cfg/segment.yaml (+ --config FILE); each run's settings are kept per stage in its state
    recipe = cfg.from_argv("segment", argv)
    t = sub.add_parser("train", help="train the U-Net (resumes from RUN_DIR/last.pt)")
    t.add_argument("--config", type=Path, default=None, help="YAML recipe on top of cxr_core/cfg/segment.yaml")
    t.add_argument("--epochs", type=int, default=recipe["epochs"])
    t.add_argument("--out", type=Path, default=settings.LUNGSEG_WEIGHTS)
    t.add_argument("--run-dir", type=Path, default=settings.CACHE_DIR / "lungseg_run")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--batch-size", type=int, default=recipe["batch_size"])
    t.add_argument("--lr", type=float, default=recipe["lr"])
    t.add_argument("--threads", type=int, default=recipe["threads"])
    t.add_argument("--log", type=Path, default=None)
    t.add_argument("--crop", type=int, default=recipe["crop"], help="train on random CROP x CROP windows (less compute)")
    t.add_argument("--freeze-blocks", type=int, default=recipe["freeze_blocks"], help="freeze the first N encoder blocks")
    t.add_argument("--until", default=None, help="UTC HH:MM today: re-plan epochs to finish by then")

    e = sub.add_parser("evaluate", help="Dice/IoU on a split (+ latency)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--weights", type=Path, default=None)
    e.add_argument("--out", type=Path, default=None)
    e.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    e.add_argument("--no-latency", action="store_true")

    c = sub.add_parser("card", help="evaluate val+test and write weights/lungseg.json + weights/lungseg_metrics.json")
    c.add_argument("--run-dir", type=Path, default=settings.CACHE_DIR / "lungseg_run")
    c.add_argument("--weights", type=Path, default=settings.LUNGSEG_WEIGHTS)
    c.add_argument("--threads", type=int, default=settings.TORCH_THREADS)

    pr = sub.add_parser("predict", help="segment one image and write the mask PNG")
    pr.add_argument("image", type=Path)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--weights", type=Path, default=None)
    pr.add_argument("--head", default=None, choices=list(settings.LUNGSEG_HEADS))
    pr.add_argument("--overlay", type=Path, default=None, help="also write the image with outline and box")

    cb = sub.add_parser("crop-boxes", help="chest box for every image of a manifest -> CSV")
    cb.add_argument("--manifest", type=Path, default=settings.CXR3_MANIFEST)
    cb.add_argument("--out", type=Path, default=settings.CACHE_DIR / "cxr3_lung_boxes.csv")
    cb.add_argument("--weights", type=Path, default=None)
    cb.add_argument("--threads", type=int, default=1)
    cb.add_argument("--limit", type=int, default=None)

    a = p.parse_args(argv)
    if a.cmd == "train":
        deadline = None
        if a.until:
            import calendar

            hh, mm = (int(v) for v in a.until.split(":"))
            now = time.gmtime()
            deadline = float(calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, 0)))
        state = train(
            a.epochs, a.out, a.run_dir, resume=not a.no_resume, batch_size=a.batch_size, lr=a.lr,
            threads=a.threads, log=a.log, deadline=deadline, crop=a.crop, freeze_blocks=a.freeze_blocks,
        )
        print(json.dumps({k: state[k] for k in ("epoch", "best_epoch", "best_dice", "train_seconds")}))
    elif a.cmd == "evaluate":
        res = evaluate(a.split, a.weights, threads=a.threads, latency=not a.no_latency)
        text = json.dumps(res, indent=1)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(text)
        short = {k: v for k, v in res.items() if k != "per_image"}
        print(json.dumps(short, indent=1))
    elif a.cmd == "card":
        metrics = {
            "val": evaluate("val", a.weights, threads=a.threads, latency=False),
            "test": evaluate("test", a.weights, threads=a.threads, latency=True),
        }
        metrics_path = a.weights.with_name(a.weights.stem + "_metrics.json")
        metrics_path.write_text(json.dumps(metrics, indent=1))
        info = write_card(a.run_dir, a.weights, metrics, a.weights.with_suffix(".json"))
        print(json.dumps(info["metrics"], indent=1), json.dumps(info["latency"]))
    elif a.cmd == "predict":
        from cxr_core.io import load_image

        img = load_image(a.image)
        lm = segment(img, load_segmenter(a.weights), head=a.head)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(a.out), lm.mask.astype(np.uint8) * 255)
        box = chest_box(lm)
        if a.overlay:
            rgb = cv2.cvtColor(img.to_uint8(), cv2.COLOR_GRAY2BGR)
            layer = outline_rgba(lm)
            on = layer[..., 3] > 0
            rgb[on] = layer[on][:, [2, 1, 0]]
            cv2.rectangle(rgb, box[:2], (box[2] - 1, box[3] - 1), (0, 255, 0), max(1, img.width // 300))
            cv2.imwrite(str(a.overlay), rgb)
        print(json.dumps({
            "image": str(a.image), "mask": str(a.out), "size": [img.width, img.height], "chest_box": list(box),
            "lung_fraction": round(lm.lung_fraction, 4), "n_components": lm.n_components,
            "plausible": lm.plausible, "reason": lm.reason, "head": lm.head,
        }))
    elif a.cmd == "crop-boxes":
        n = crop_boxes(a.manifest, a.out, a.weights, threads=a.threads, limit=a.limit)
        print(json.dumps({"written": n, "out": str(a.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
