"""Chest boxes for the lung-crop classifier ablation (`segment crop-boxes`)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

from cxr_core.segment.model import load_segmenter
from cxr_core.segment.predict import chest_box, segment_batch


# --- crop boxes for cxr3 -------------------------------------------------------------------------


def crop_boxes(
    manifest: Path, out: Path, weights: Path | None = None, threads: int = 1, limit: int | None = None, batch: int = 16
) -> int:
    """Chest box of every image in a manifest (column `path`, relative to the manifest's folder).

    Boxes are in `load_image` pixel coordinates (large images are downscaled to a 1024 long side
    there), plus the same box as fractions of width/height, which survive any resize.
    Resumable: rows already in `out` are skipped.
    """
    import pandas as pd
    from tqdm import tqdm

    from cxr_core.io import ImageLoadError, load_image

    torch.set_num_threads(threads)
    seg = load_segmenter(weights)
    df = pd.read_csv(manifest)
    if limit:
        df = df.head(limit)
    root = Path(manifest).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if out.is_file():
        with open(out, newline="") as f:
            done = {r["path"] for r in csv.DictReader(f)}
    cols = [
        "path", "split", "label", "width", "height", "x0", "y0", "x1", "y1",
        "x0_frac", "y0_frac", "x1_frac", "y1_frac", "lung_fraction", "n_components", "plausible", "reason",
    ]
    new_file = not out.is_file() or not done
    rows = [r for r in df.itertuples(index=False) if str(r.path) not in done]
    written = 0
    with open(out, "a" if not new_file else "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        if new_file:
            w.writeheader()
        bar = tqdm(total=len(rows), file=sys.stderr, mininterval=30, ncols=100)
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            recs, imgs = [], []
            for row in chunk:
                rec = {"path": str(row.path), "split": getattr(row, "split", ""), "label": getattr(row, "label", "")}
                try:
                    imgs.append(load_image(root / str(row.path)))
                except ImageLoadError as exc:
                    imgs.append(None)
                    rec.update(reason=f"load error: {exc}", plausible=0)
                recs.append(rec)
            ok = [i for i, im in enumerate(imgs) if im is not None]
            for i, lm in zip(ok, segment_batch([imgs[i] for i in ok], seg)):
                x0, y0, x1, y1 = chest_box(lm)
                hh, ww = imgs[i].pixels.shape
                recs[i].update(
                    width=ww, height=hh, x0=x0, y0=y0, x1=x1, y1=y1,
                    x0_frac=round(x0 / ww, 5), y0_frac=round(y0 / hh, 5),
                    x1_frac=round(x1 / ww, 5), y1_frac=round(y1 / hh, 5),
                    lung_fraction=round(lm.lung_fraction, 4), n_components=lm.n_components,
                    plausible=int(lm.plausible), reason=lm.reason,
                )
            w.writerows(recs)
            f.flush()
            written += len(recs)
            bar.update(len(recs))
        bar.close()
    return written
