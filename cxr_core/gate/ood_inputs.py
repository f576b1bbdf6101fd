"""Inputs that probe the not-a-chest-X-ray check: non-CXR images made offline, and borderline films.

Kept out of `cxr_core.ood` (the runtime check the app loads) because only the `ood evaluate`
measurement and the tests need them: photographs from scikit-learn's bundled samples, text pages,
noise, gradients, patterns, drawn hand and skull radiographs, MRI-like and elevation-map slices,
and real CXRs pushed to the edge (rotated, cropped, inverted, ...). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import io as _io
from pathlib import Path
from typing import Sequence

import numpy as np

from cxr_core.io import CXRImage, ImageLoadError, load_image


def _gray_image(arr: np.ndarray, fmt: str = "PNG") -> CXRImage:
    """uint8 / float array (H, W) or (H, W, 3) -> CXRImage through the real decoder (PNG bytes)."""
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(np.asarray(a, np.float32) * 255.0), 0, 255).astype(np.uint8)
    buf = _io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return load_image(buf.getvalue())


def _photos() -> list[np.ndarray]:
    out: list[np.ndarray] = []
    try:
        from sklearn.datasets import load_sample_images

        out += [np.asarray(im) for im in load_sample_images().images]
    except Exception:
        pass
    try:
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            out.append(np.asarray(Image.open(fh).convert("RGB")))
    except Exception:
        pass
    return out


def _crops(img: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = img.shape[:2]
    out = [img]
    for _ in range(n - 1):
        s = rng.uniform(0.45, 0.9)
        ch, cw = int(h * s), int(w * s)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out.append(img[y : y + ch, x : x + cw])
    return out


def _text_page(rng: np.random.Generator, w: int = 600, h: int = 800) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(im)
    words = ("patient", "chest", "radiograph", "report", "findings", "normal", "lungs", "clear", "the", "of",
             "and", "no", "acute", "cardiopulmonary", "process", "impression", "history", "cough", "fever")
    y = int(rng.integers(20, 60))
    size = int(rng.integers(12, 26))
    while y < h - 40:
        line = " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
        d.text((int(rng.integers(20, 60)), y), line, fill=int(rng.integers(0, 60)), font_size=size)
        y += int(size * rng.uniform(1.3, 2.2))
    if rng.random() < 0.5:  # a table or a title bar
        d.rectangle([30, 30, w - 30, 30 + size * 2], outline=0, width=2)
    return np.asarray(im)


def _noise(rng: np.random.Generator, kind: int, size: int = 320) -> np.ndarray:
    import cv2

    base = rng.random((size, size)).astype(np.float32)
    if kind == 0:
        return base
    if kind == 1:
        return np.clip(0.5 + 0.2 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)
    if kind == 2:
        return (base > 0.5).astype(np.float32)
    sigma = float(rng.uniform(2, 12))
    sm = cv2.GaussianBlur(base, (0, 0), sigma)
    return (sm - sm.min()) / max(float(sm.max() - sm.min()), 1e-6)


def _gradient(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * np.pi)
        g = np.cos(a) * x + np.sin(a) * y
    else:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        g = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return ((g - g.min()) / max(float(g.max() - g.min()), 1e-6)).astype(np.float32)


def _pattern(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    p = int(rng.integers(8, 64))
    if rng.random() < 0.6:
        return (((x // p) + (y // p)) % 2).astype(np.float32)
    return ((x // p) % 2).astype(np.float32) if rng.random() < 0.5 else ((y // p) % 2).astype(np.float32)


def _hand(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    """A crude radiograph of a hand: dark background, soft tissue, five rays of bright phalanges."""
    import cv2

    img = np.zeros((size, size), np.float32) + 0.05
    palm_c = (size // 2 + int(rng.integers(-20, 20)), int(size * 0.72))
    cv2.ellipse(img, palm_c, (size // 5, size // 5), 0, 0, 360, 0.35, -1)
    bones = np.zeros_like(img)
    angles = np.linspace(-60, 60, 5) + rng.uniform(-8, 8, 5)
    for i, a in enumerate(angles):
        length = size * (0.42 if i in (1, 2, 3) else 0.3)
        dx, dy = np.sin(np.radians(a)), -np.cos(np.radians(a))
        x0, y0 = palm_c[0] + dx * size * 0.1, palm_c[1] + dy * size * 0.1
        x1, y1 = x0 + dx * length, y0 + dy * length
        cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), 0.35, int(size * 0.07))
        seg = 3 if i else 2
        for s in range(seg):
            t0, t1 = s / seg + 0.03, (s + 1) / seg - 0.03
            p0 = (int(x0 + dx * length * t0), int(y0 + dy * length * t0))
            p1 = (int(x0 + dx * length * t1), int(y0 + dy * length * t1))
            cv2.line(bones, p0, p1, 0.45, int(size * 0.035))
        # metacarpal inside the palm
        cv2.line(bones, (palm_c[0] + int(dx * 10), palm_c[1] + 40), (int(x0), int(y0)), 0.4, int(size * 0.03))
    img = img + bones
    img += 0.03 * cv2.GaussianBlur(rng.standard_normal(img.shape).astype(np.float32), (0, 0), 1.5)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.2), 0, 1)


def _skull(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    """A crude lateral/AP skull: bright elliptical vault with a darker brain and jaw."""
    import cv2

    img = np.zeros((size, size), np.float32) + 0.05
    c = (size // 2, int(size * 0.45))
    ax = (int(size * rng.uniform(0.32, 0.4)), int(size * rng.uniform(0.36, 0.42)))
    cv2.ellipse(img, c, ax, 0, 0, 360, 0.8, -1)
    cv2.ellipse(img, c, (ax[0] - 14, ax[1] - 14), 0, 0, 360, 0.45, -1)
    cv2.ellipse(img, (c[0], c[1] + int(ax[1] * 0.9)), (int(ax[0] * 0.6), int(size * 0.12)), 0, 0, 180, 0.7, 18)
    img += 0.04 * cv2.GaussianBlur(rng.standard_normal(img.shape).astype(np.float32), (0, 0), 2.0)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.5), 0, 1)


def _mri() -> list[np.ndarray]:
    """Matplotlib's bundled brain MRI slice (s1045.ima.gz, 256 x 256, 16-bit), if available."""
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("s1045.ima.gz") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        a = np.frombuffer(raw, np.uint16).reshape(256, 256).astype(np.float32)
        a = a / max(float(a.max()), 1.0)
        return [a, np.fliplr(a), a[20:236, 20:236]]
    except Exception:
        return []


def _dem() -> list[np.ndarray]:
    """Matplotlib's bundled elevation maps (grey, texture-rich, not a radiograph)."""
    out = []
    try:
        import matplotlib.cbook as cbook

        for name in ("jacksboro_fault_dem.npz", "topobathy.npz"):
            with np.load(cbook.get_sample_data(name, asfileobj=False)) as z:
                a = np.asarray(z["elevation"], np.float32)
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
            out.append(a)
    except Exception:
        pass
    return out


def non_cxr_inputs(seed: int = 0, per_kind: int = 12) -> dict[str, list[CXRImage]]:
    """Non-chest-X-ray inputs made offline, each decoded through the real `load_image` path.

    Kinds: photo_colour, photo_grey (photographs from scikit-learn / matplotlib sample data),
    text (rendered documents), noise, gradient, pattern (checkerboards / stripes), hand and skull
    (synthetic radiographs of other body parts), mri (matplotlib's brain MRI), map (elevation maps).
    """
    import cv2

    rng = np.random.default_rng(seed)
    out: dict[str, list[CXRImage]] = {}
    photos = _photos()
    crops = [c for p in photos for c in _crops(p, max(2, per_kind // max(len(photos), 1)), rng)]
    out["photo_colour"] = [_gray_image(c) for c in crops]
    out["photo_grey"] = [_gray_image(cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2GRAY)) for c in crops]
    out["text"] = [_gray_image(_text_page(rng)) for _ in range(per_kind)]
    out["noise"] = [_gray_image(_noise(rng, i % 4)) for i in range(per_kind)]
    out["gradient"] = [_gray_image(_gradient(rng)) for _ in range(per_kind)]
    out["pattern"] = [_gray_image(_pattern(rng)) for _ in range(per_kind)]
    out["hand"] = [_gray_image(_hand(rng)) for _ in range(per_kind)]
    out["skull"] = [_gray_image(_skull(rng)) for _ in range(max(4, per_kind // 2))]
    mri = _mri()
    if mri:
        out["mri"] = [_gray_image(a) for a in mri]
    dem = _dem()
    if dem:
        out["map"] = [_gray_image(a) for a in dem]
    return {k: v for k, v in out.items() if v}


BORDERLINE = {
    # real CXRs transformed into something that is not a normal frontal chest film
    "rotated_90": lambda p: np.ascontiguousarray(np.rot90(p)),
    "upside_down": lambda p: np.ascontiguousarray(p[::-1]),
    "inverted": lambda p: 1.0 - p,
}


def borderline_inputs(paths: Sequence[Path]) -> dict[str, list[CXRImage]]:
    out: dict[str, list[CXRImage]] = {k: [] for k in BORDERLINE}
    for p in paths:
        try:
            base = load_image(p)
        except ImageLoadError:
            continue
        for k, f in BORDERLINE.items():
            out[k].append(CXRImage(pixels=f(base.pixels).astype(np.float32), meta=base.meta, filename=base.filename))
    return out


