"""Inference: load the trained YOLO detector once, find boxes on a CXRImage, draw them.

The detector is a research preview (see weights/detector.json): it was fine-tuned on 799 TBX11K
tuberculosis radiographs but on only 10 VinBigData training images, so the 14 VinBigData classes
are not validated and every Box carries ``validated`` from the model card.
"""

from __future__ import annotations

import colorsys
import functools
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from cxr_core import settings
from cxr_core.boxes import Box
from cxr_core.io import CXRImage

_OFFLINE_SETTINGS = {
    "sync": False,  # no usage analytics / events
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "hub": False,
}


def local_font() -> str | None:
    """A TrueType font shipped inside the installed matplotlib wheel (no download)."""
    try:
        import matplotlib

        p = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return str(p) if p.is_file() else None
    except Exception:
        return None


def ultralytics_offline():
    """Import ultralytics so that it can never reach the network; returns the ``YOLO`` class.

    * ``YOLO_OFFLINE=1`` (set before the first import) makes ``ultralytics.utils.ONLINE`` False,
      which disables the events/analytics sync, update checks and "online" download retries;
    * the integrations and ``sync`` are switched off in the ultralytics settings;
    * ``check_font`` (called by ``check_det_dataset`` for every training/validation run, and by
      the plotting Annotator) would download Arial.ttf: it is replaced by a function returning
      matplotlib's bundled DejaVuSans.ttf;
    * callers pass ``plots=False`` and ``amp=False`` (the AMP check would fetch yolo26n.pt; on CPU
      it returns before that anyway) and only local ``.pt`` paths, never hub names.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import ultralytics
    import ultralytics.data.utils as data_utils
    import ultralytics.utils as uutils
    import ultralytics.utils.checks as checks
    import ultralytics.utils.plotting as plotting
    from ultralytics import settings as usettings

    uutils.ONLINE = False
    checks.ONLINE = False
    try:
        import ultralytics.utils.events as events

        events.ONLINE = False
    except ImportError:  # pragma: no cover - older/newer layouts
        pass
    if any(usettings.get(k) != v for k, v in _OFFLINE_SETTINGS.items() if k in usettings):
        usettings.update({k: v for k, v in _OFFLINE_SETTINGS.items() if k in usettings})
    font = local_font()

    def _check_font(name: str = "Arial.ttf"):  # never download
        return font

    checks.check_font = _check_font
    data_utils.check_font = _check_font
    plotting.check_font = _check_font
    _restore_pil_open()
    return ultralytics.YOLO


def _restore_pil_open() -> None:
    """Undo ultralytics' process-wide patch of ``PIL.Image.open``.

    On any file PIL cannot identify, the patched ``open`` calls ``check_requirements("pi-heif")``
    (a pip install, i.e. the network) and then fails with ModuleNotFoundError, which would turn
    cxr_core.io's specific "damaged file" messages into a generic one for every later upload.
    We read no HEIF files, so PIL's own ``open`` is put back.
    """
    from PIL import Image

    try:
        from ultralytics.utils import patches
    except ImportError:  # pragma: no cover - other ultralytics layouts
        return
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


def _card(path: Path) -> dict:
    card_path = path.with_suffix(".json")
    if card_path.is_file():
        try:
            return json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def default_threshold(card: Mapping | None = None) -> float:
    """The app's default box threshold, from the detector card.

    The card's measured ``operating_point.threshold`` (``python -m cxr_core detect operating-point``:
    TB false positives per Normal film and TB precision meet stated targets), else its best-F1
    ``operating_threshold`` (measured on TB-positive films only), else ``settings.DETECTOR_CONF``.
    ``card=None`` reads the card next to the shipped weights; never below ``settings.DETECTOR_MIN_CONF``,
    the confidence the boxes are detected at.
    """
    if card is None:
        card = _card(Path(settings.DETECTOR_WEIGHTS))
    card = card if isinstance(card, Mapping) else {}
    op = card.get("operating_point")
    for value in (op.get("threshold") if isinstance(op, Mapping) else None, card.get("operating_threshold")):
        try:
            t = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(t) and 0.0 < t < 1.0:
            return max(t, settings.DETECTOR_MIN_CONF)
    return settings.DETECTOR_CONF


@functools.lru_cache(maxsize=4)
def _load(path: str):
    YOLO = ultralytics_offline()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"No detector weights at {p}. Train them with `python -m cxr_core.detection train`."
        )
    model = YOLO(str(p), task="detect")
    card = _card(p)
    validated = set(card.get("validated_classes", []))
    train_args = (getattr(model, "ckpt", None) or {}).get("train_args", {}) or {}
    imgsz = int(train_args.get("imgsz") or settings.DETECTOR_IMGSZ)  # infer at the training size
    return model, validated, imgsz


def _loaded(path: str | Path | None):
    """(model, validated classes, training size) for ``path`` (default weights/detector.pt), once per file."""
    return _load(str(Path(path or settings.DETECTOR_WEIGHTS).resolve()))


def trained_imgsz(path: str | Path | None = None) -> int:
    """The input size a checkpoint was trained at: validation and inference must use the same."""
    return _loaded(path)[2]


def load_detector(path: str | Path | None = None):
    """The YOLO model at ``path`` (default weights/detector.pt), loaded once per process."""
    return _loaded(path)[0]


def _rgb(image: CXRImage) -> np.ndarray:
    g = image.to_uint8()
    return np.ascontiguousarray(np.stack([g, g, g], axis=-1))


def detect(
    image: CXRImage,
    conf: float = settings.DETECTOR_CONF,
    classes: list[str] | None = None,
    *,
    weights: str | Path | None = None,
    imgsz: int | None = None,
) -> list[Box]:
    """Boxes found on ``image`` in ORIGINAL pixel coordinates (``image.meta.original_size``).

    ``classes`` restricts the output to these labels (names from settings.DETECTOR_CLASSES).
    """
    model, validated, train_imgsz = _loaded(weights)
    names = model.names
    class_ids = None
    if classes is not None:
        wanted = set(classes)
        unknown = wanted - set(names.values())
        if unknown:
            raise ValueError(f"Unknown detector classes: {sorted(unknown)}")
        class_ids = [i for i, n in names.items() if n in wanted]
        if not class_ids:
            return []
    rgb = _rgb(image)
    res = model.predict(
        rgb[..., ::-1],  # ultralytics expects BGR numpy arrays
        imgsz=imgsz or train_imgsz,
        conf=conf,
        classes=class_ids,
        device="cpu",
        verbose=False,
    )[0]
    ow, oh = image.meta.original_size
    fx, fy = ow / image.width, oh / image.height
    out: list[Box] = []
    xyxy = res.boxes.xyxy.cpu().numpy() if res.boxes is not None else np.zeros((0, 4))
    cls = res.boxes.cls.cpu().numpy().astype(int) if res.boxes is not None else []
    confs = res.boxes.conf.cpu().numpy() if res.boxes is not None else []
    for (x0, y0, x1, y1), c, p in zip(xyxy, cls, confs):
        label = names[int(c)]
        out.append(
            Box(
                float(x0 * fx), float(y0 * fy), float(x1 * fx), float(y1 * fy),
                int(c), label, float(p), label in validated,
            )
        )
    out.sort(key=lambda b: -b.confidence)
    return out


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, saturated RGB colour per class id (golden-angle hue steps)."""
    h = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def label_layout(
    anchors: Iterable[tuple[int, int, int, int]],
    sizes: Iterable[tuple[int, int]],
    image_size: tuple[int, int],
    gap: int = 1,
) -> list[tuple[int, int]]:
    """Top-left corners of the label tags of boxes (x0, y0, x1, y1 in the drawn image's pixels).

    Every tag lies inside the image (a tag wider or taller than the image starts at 0), and tags do
    not overlap where the image has room. Greedy, in the given order (``detect()`` returns boxes by
    descending confidence, so the surest finding gets its preferred spot): just above the box, or
    inside its top edge when there is no room above; if that spot is taken, the nearest free spot
    one tag height further down or up.
    """
    w, h = image_size
    placed: list[tuple[int, int, int, int]] = []
    out: list[tuple[int, int]] = []

    def free(x: int, y: int, lw: int, lh: int) -> bool:
        return all(x + lw <= a or a + bw <= x or y + lh <= b or b + bh <= y for a, b, bw, bh in placed)

    for (x0, y0, _x1, _y1), (lw, lh) in zip(anchors, sizes):
        x = int(min(max(0, x0), max(0, w - lw)))
        y_max = max(0, h - lh)
        pref = int(min(max(0, y0 - lh if y0 - lh >= 0 else y0), y_max))
        step = lh + gap
        y = pref
        if not free(x, pref, lw, lh):
            for k in range(1, 2 + h // max(1, step)):
                options = [c for c in (pref + k * step, pref - k * step) if 0 <= c <= y_max]
                hit = next((c for c in options if free(x, c, lw, lh)), None)
                if hit is not None:
                    y = hit
                    break
                if not options and (pref + k * step > y_max and pref - k * step < 0):
                    break
        placed.append((x, y, lw, lh))
        out.append((x, y))
    return out


def draw_boxes(
    rgb: np.ndarray,
    boxes: Iterable[Box],
    *,
    scale: tuple[float, float] | None = None,
    thickness: int | None = None,
    show_confidence: bool = True,
) -> np.ndarray:
    """Draw boxes (with class label and confidence) on a copy of an RGB uint8 image.

    Boxes are in original-image pixels; if ``rgb`` is a resized view pass ``scale`` =
    (rgb_width / original_width, rgb_height / original_height), otherwise the boxes are assumed
    to be in ``rgb``'s pixels. Text uses OpenCV's built-in Hershey font (no font files).
    Unvalidated classes are marked with "*" after the label. Labels stay inside the image and apart
    from each other (``label_layout``); all boxes are drawn before any label, so no box line crosses a tag.
    """
    import cv2

    img = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).copy())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    h, w = img.shape[:2]
    sx, sy = scale or (1.0, 1.0)
    t = thickness or max(1, round(max(h, w) / 400))
    font = cv2.FONT_HERSHEY_SIMPLEX
    weight = max(1, t // 2 + 1)
    boxes = list(boxes)
    anchors, sizes, tags = [], [], []
    for b in boxes:
        colour = class_colour(b.class_id)
        p0 = (int(round(b.x0 * sx)), int(round(b.y0 * sy)))
        p1 = (int(round(b.x1 * sx)), int(round(b.y1 * sy)))
        cv2.rectangle(img, p0, p1, colour, t, cv2.LINE_8)
        text = b.label + ("" if b.validated else "*")
        if show_confidence:
            text += f" {b.confidence:.2f}"
        fs = max(0.4, max(h, w) / 1400)
        (tw, th), base = cv2.getTextSize(text, font, fs, weight)
        while tw + 2 > w and fs > 0.25:  # a tag wider than the image: smaller text first ...
            fs *= 0.85
            (tw, th), base = cv2.getTextSize(text, font, fs, weight)
        while tw + 2 > w and len(text) > 3:  # ... then a shortened label
            text = text[:-3].rstrip() + ".."
            (tw, th), base = cv2.getTextSize(text, font, fs, weight)
        anchors.append((min(p0[0], p1[0]), min(p0[1], p1[1]), max(p0[0], p1[0]), max(p0[1], p1[1])))
        sizes.append((tw + 2, th + base + 2))
        tags.append((text, fs, th, colour))
    for (x, y), (lw, lh), (text, fs, th, colour) in zip(label_layout(anchors, sizes, (w, h)), sizes, tags):
        cv2.rectangle(img, (x, y), (x + lw - 1, y + lh - 1), colour, -1)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(img, text, (x + 1, y + th + 1), font, fs, ink, weight, cv2.LINE_AA)
    return img
