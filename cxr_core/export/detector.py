"""The YOLO detector through ultralytics' own ONNX export, checked against the .pt.

    python -m cxr_core.export --detector                     # weights/onnx/detector.onnx + detector.json

Offline: `ultralytics_offline()` first; `simplify=False` because onnxslim is not installed and
ultralytics would try to pip-install it; ultralytics' exporter itself uses torch's TorchScript
exporter (dynamo=False). The export runs on a copy of the .pt in a temporary folder, because
ultralytics writes the .onnx beside its source.

Check: `cxr_core.detect.predict.detect` with the .pt and with the .onnx on the same films at the
training size, boxes matched per class by IoU; the card gives unmatched boxes at the operating
threshold and at a low threshold, and the largest confidence / coordinate differences.
The card beside the .onnx also carries `validated_classes`, which `detect()` reads from the JSON
beside whatever weights it loads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxr_core import settings
from cxr_core.export import to_onnx


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(ref: list, new: list, iou: float = 0.5) -> dict[str, Any]:
    """Greedy same-class IoU matching of two box lists (highest confidence first)."""
    used: set[int] = set()
    conf_d, coord_d, ious = [], [], []
    for a in sorted(ref, key=lambda b: -b.confidence):
        best, best_iou = None, iou
        for j, b in enumerate(new):
            if j in used or b.class_id != a.class_id:
                continue
            v = _iou(a, b)
            if v >= best_iou:
                best, best_iou = j, v
        if best is not None:
            used.add(best)
            b = new[best]
            conf_d.append(abs(a.confidence - b.confidence))
            coord_d.append(max(abs(a.x0 - b.x0), abs(a.y0 - b.y0), abs(a.x1 - b.x1), abs(a.y1 - b.y1)))
            ious.append(best_iou)
    return {"n_ref": len(ref), "n_new": len(new), "matched": len(used), "unmatched_ref": len(ref) - len(used),
            "unmatched_new": len(new) - len(used), "conf_diffs": conf_d, "coord_diffs": coord_d, "ious": ious}


def check_detector(pt: Path, onnx_file: Path, images: list, imgsz: int, conf: float) -> dict[str, Any]:
    from cxr_core.detect.predict import detect

    out: dict[str, Any] = {"n_images": len(images), "imgsz": imgsz}
    for tag, c in (("operating_threshold", conf), ("low_threshold_0.01", 0.01)):
        per = [match_boxes(detect(im, conf=c, weights=pt, imgsz=imgsz), detect(im, conf=c, weights=onnx_file, imgsz=imgsz))
               for im in images]
        cd = [d for p in per for d in p["conf_diffs"]]
        xd = [d for p in per for d in p["coord_diffs"]]
        out[tag] = {
            "conf": c,
            "boxes_pt": sum(p["n_ref"] for p in per), "boxes_onnx": sum(p["n_new"] for p in per),
            "matched": sum(p["matched"] for p in per),
            "unmatched_pt": sum(p["unmatched_ref"] for p in per), "unmatched_onnx": sum(p["unmatched_new"] for p in per),
            "max_conf_diff": float(max(cd)) if cd else None,
            "max_coord_diff_px": float(max(xd)) if xd else None,
            "min_iou": float(min(d for p in per for d in p["ious"])) if cd else None,
        }
    return out


def check_images(n: int, seed: int = settings.SEED) -> tuple[list, dict[str, Any]]:
    """`n` cxr3 test films (seeded), or chest phantoms-like synthetic films when cxr3 is absent."""
    from cxr_core.io import load_image

    try:
        from cxr_core.data import manifest_rows

        rows = manifest_rows("test")
        idx = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False))
        return ([load_image(settings.CXR3_DIR / rows[i]["path"]) for i in idx],
                {"data": "cxr3", "split": "test", "n": int(len(idx)), "seed": seed})
    except FileNotFoundError:  # no cxr3 here: smooth synthetic films, said so on the card
        import io as _io

        from PIL import Image

        rng = np.random.default_rng(seed)
        ims = []
        for _ in range(n):
            small = rng.random((16, 16)).astype(np.float32)
            big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((512, 512), Image.BICUBIC))
            buf = _io.BytesIO()
            Image.fromarray(big).save(buf, "PNG")
            ims.append(load_image(buf.getvalue(), "synthetic.png"))
        return ims, {"data": "synthetic smooth noise (cxr3 not found)", "n": n, "seed": seed}


def export_detector(pt: Path | None = None, out_dir: Path | None = None, n_check: int = 8, command: str = "",
                    log: Callable[[str], None] = print) -> tuple[Path, dict]:
    from cxr_core.detect.predict import _card, trained_imgsz, ultralytics_offline

    pt = Path(pt or settings.DETECTOR_WEIGHTS)
    if not pt.is_file():
        raise FileNotFoundError(f"No detector weights at {pt}.")
    out_dir = Path(out_dir or to_onnx.default_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    YOLO = ultralytics_offline()
    imgsz = trained_imgsz(pt)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "detector.pt"
        shutil.copyfile(pt, src)
        made = Path(YOLO(str(src), task="detect").export(format="onnx", imgsz=imgsz, simplify=False, dynamic=False,
                                                          device="cpu", verbose=False))
        dest = out_dir / "detector.onnx"
        shutil.move(str(made), dest)
    to_onnx.check_file(dest)
    to_onnx.size_guard(dest)
    log(f"exported {dest} ({dest.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t:.1f} s; onnx.checker passed")
    pt_card = _card(pt)
    conf = float(pt_card.get("operating_threshold", settings.DETECTOR_CONF))
    images, described = check_images(n_check)
    check = check_detector(pt, dest, images, imgsz, conf)
    op = check["operating_threshold"]
    log(f"  vs .pt on {len(images)} films: {op['matched']}/{op['boxes_pt']} boxes matched at conf {conf}, "
        f"max conf diff {op['max_conf_diff']}")
    card = {
        "format_version": to_onnx.FORMAT_VERSION,
        "name": "detector",
        "file": {"name": dest.name, "bytes": dest.stat().st_size, "mb": round(dest.stat().st_size / 1e6, 3),
                 "sha256": to_onnx.sha256_file(dest)},
        "source_weights": {"name": pt.name, "sha256": to_onnx.sha256_file(pt)},
        "exporter": "ultralytics YOLO.export(format='onnx', simplify=False, dynamic=False)",
        "opset": to_onnx.file_opset(dest),
        "versions": to_onnx.versions(),
        "input": {"shape": [1, 3, imgsz, imgsz], "imgsz": imgsz, "note": "ultralytics letterbox, RGB / 255"},
        "validated_classes": pt_card.get("validated_classes", []),  # read by detect() beside the weights
        "operating_threshold": conf,
        "classes": pt_card.get("classes"),
        "status": pt_card.get("status"),
        "check": {"films": described, **check},
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    card = to_onnx.clean(card)
    to_onnx.card_path_for(dest).write_text(json.dumps(card, indent=1, allow_nan=False) + "\n")
    return dest, card
