"""The film viewer's image operations: window/level and presets (in the file's real units where it has
them), distance in mm, invert, zoom, the lung outline, box scaling, and the interactive plotly view. Display only: nothing here changes what a model sees.

No Streamlit here, so every number the app shows can be checked from a notebook or a test.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxr_core.ui.figures import _LAYOUT


def window_level(pixels: np.ndarray, brightness: float = 0.0, contrast: float = 1.0) -> np.ndarray:
    """Display window: level shifted by `brightness` (-0.5..0.5), width divided by `contrast` (>0).

    pixels: float [0, 1] (H, W). Returns uint8 (H, W). brightness 0 / contrast 1 is the identity.
    """
    p = np.asarray(pixels, dtype=np.float32)
    centre = 0.5 - float(brightness)
    width = 1.0 / max(float(contrast), 1e-3)
    lo = centre - width / 2.0
    out = (p - lo) / width
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


# Fixed window presets on the display scale (0 = darkest, 1 = brightest value of the film as decoded),
# kept for callers of the old API. The page uses `window_presets(pixels, meta)`: the file's own header
# windows in real units, and film-relative (percentile) windows named as what they are.
WINDOW_PRESETS: dict[str, tuple[float, float] | None] = {
    "Full range": (0.5, 1.0),
    "Lung": (0.35, 0.70),         # spreads the dark (air-filled) half: vessels and fine lung markings
    "Mediastinum": (0.65, 0.50),  # spreads the bright half: heart, spine, tubes and lines
    "Auto (1-99 % of pixels)": None,
}


def auto_window(pixels: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> tuple[float, float]:
    """(centre, width) covering the 1st..99th percentile of the film's pixel values."""
    p = np.asarray(pixels, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(p, [lo_pct, hi_pct]))
    width = max(hi - lo, 1e-3)
    return (lo + hi) / 2.0, width


def window_from_sliders(brightness: float, contrast: float) -> tuple[float, float]:
    """(centre, width) on the display scale for the viewer's brightness / contrast sliders."""
    return 0.5 - float(brightness), 1.0 / max(float(contrast), 1e-3)


def sliders_from_window(centre: float, width: float) -> tuple[float, float]:
    """Inverse of `window_from_sliders`, clamped to the sliders' ranges (-0.5..0.5, 0.5..4)."""
    brightness = min(max(0.5 - float(centre), -0.5), 0.5)
    contrast = min(max(1.0 / max(float(width), 1e-3), 0.5), 4.0)
    return round(brightness, 2), round(contrast * 20) / 20


# --- window / level in real units (ImageMeta.value_range) -------------------------------------------
#
# The decoded film `pixels` p relates to the modality value v (stored value after Rescale Slope/Intercept)
# by v = v0 + p * (v1 - v0), (v0, v1) = meta.value_range (reversed for MONOCHROME1). A window in real
# units follows DICOM PS3.3 C.11.2.1.2: LINEAR (the default) shows c - 0.5 -/+ (w - 1) / 2 as black /
# white, LINEAR_EXACT c -/+ w / 2. So the header's own first window, which io applied when decoding,
# is exactly the display identity (centre 0.5, width 1), and "Full range" of a 12-bit film is
# C 2048 / W 4096, as on a PACS viewer.


def _span(value_range: Sequence[float] | None) -> tuple[float, float]:
    if value_range is None:
        raise ValueError("the film has no linear map to real units (value_range is None)")
    v0, v1 = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(v0) and math.isfinite(v1)) or v1 == v0:
        raise ValueError(f"value_range {value_range!r} is empty or not finite")
    return v0, v1 - v0


def window_to_display(centre: float, width: float, value_range: Sequence[float] | None, *,
                      exact: bool = False) -> tuple[float, float]:
    """A window (centre, width) in real units -> (centre, width) on the display scale of `pixels`.

    exact: the header's VOILUTFunction is LINEAR_EXACT (no half-value shift, width not reduced by 1).
    The display width can exceed 1 (a window wider than the decoded range) or be tiny; it is never
    negative. Raises ValueError when the film has no real units.
    """
    v0, span = _span(value_range)
    c, w = (float(centre), float(width)) if exact else (float(centre) - 0.5, float(width) - 1.0)
    return (c - v0) / span, max(w, 0.0) / abs(span)


def window_to_real(centre: float, width: float, value_range: Sequence[float] | None, *,
                   exact: bool = False) -> tuple[float, float]:
    """Inverse of `window_to_display`: a display-scale window -> (centre, width) in real units."""
    v0, span = _span(value_range)
    c, w = v0 + float(centre) * span, float(width) * abs(span)
    return (c, w) if exact else (c + 0.5, w + 1.0)


def has_real_units(meta: Any) -> bool:
    """Whether the film's windows can be shown in real units (a linear, non-empty value_range)."""
    try:
        _span(getattr(meta, "value_range", None))
    except ValueError:
        return False
    return True


def _exact(meta: Any) -> bool:
    return str(getattr(meta, "voi_function", "LINEAR") or "LINEAR").upper() == "LINEAR_EXACT"


def units_label(meta: Any) -> str:
    """The unit shown after a window: RescaleType ("HU", ...) or "(pixel value)" when there is none."""
    units = str(getattr(meta, "units", "") or "").strip()
    return units or "(pixel value)"


def real_window_of(meta: Any, centre: float, width: float) -> tuple[float, float] | None:
    """The display-scale window (centre, width) in the film's real units, or None without them."""
    if not has_real_units(meta):
        return None
    return window_to_real(centre, width, meta.value_range, exact=_exact(meta))


def format_window(centre: float, width: float, meta: Any) -> str:
    """ "C 2048 / W 4096 (pixel value)": real units, with as many decimals as one grey level needs."""
    real = real_window_of(meta, centre, width)
    if real is None:
        return f"C {centre:.2f} / W {width:.2f} (display scale)"
    step = abs(_span(meta.value_range)[1]) / 255.0  # one of the display's 256 grey levels, in real units
    decimals = int(min(4, max(0, -math.floor(math.log10(step))))) if step > 0 else 0
    c, w = (0.0 if round(v, decimals) == 0 else v for v in real)  # no "-0"
    return f"C {c:.{decimals}f} / W {w:.{decimals}f} {units_label(meta)}"


AUTO_PRESET = "Auto (1-99 %)"
FULL_PRESET = "Full range"
# Film-relative windows (percentiles of the decoded film): radiographs (CR/DX) are not in Hounsfield
# units, so a CT-style "lung: C -600 / W 1500" would mean nothing. Named for what they aim at.
_PERCENTILE_PRESETS: dict[str, tuple[float, float]] = {
    "Lung (auto, wide)": (1.0, 80.0),           # the dark (air-filled) 80 %: lung markings and vessels
    "Mediastinum (auto, narrow)": (55.0, 99.0),  # the bright part: heart, spine, tubes and lines
    AUTO_PRESET: (1.0, 99.0),
}


def _header_presets(meta: Any) -> list[tuple[str, float, float]]:
    """(label, display centre, display width) of the header windows that map onto this film."""
    if meta is None or not has_real_units(meta):
        return []
    out = []
    for i, (name, c, w) in enumerate(getattr(meta, "window_presets", ()) or ()):
        if not _exact(meta) and w < 1:  # LINEAR needs a width of at least 1 (PS3.3 C.11.2.1.2.1)
            continue
        label = name if name.startswith("Header ") else f"{name} (header)"
        if any(label == o[0] for o in out):
            label = f"{label} #{i + 1}"
        dc, dw = window_to_display(c, w, meta.value_range, exact=_exact(meta))
        out.append((label, dc, max(dw, 1e-6)))
    return out


def preset_names(meta: Any = None) -> list[str]:
    """The viewer's preset choices for a film, without computing any percentile (cheap per rerun)."""
    return [h[0] for h in _header_presets(meta)] + list(_PERCENTILE_PRESETS) + [FULL_PRESET]


def window_presets(pixels: np.ndarray, meta: Any = None) -> dict[str, tuple[float, float]]:
    """Every preset for this film as a display-scale (centre, width), in menu order: the DICOM header's
    windows (exact, in the file's units), then film-relative percentile windows, then the full range."""
    out: dict[str, tuple[float, float]] = {name: (c, w) for name, c, w in _header_presets(meta)}
    p = np.asarray(pixels, dtype=np.float32)
    pcts = sorted({v for pair in _PERCENTILE_PRESETS.values() for v in pair})
    at = dict(zip(pcts, (float(v) for v in np.percentile(p, pcts))))
    for name, (lo_pct, hi_pct) in _PERCENTILE_PRESETS.items():
        lo, hi = at[lo_pct], at[hi_pct]
        out[name] = ((lo + hi) / 2.0, max(hi - lo, 1e-3))
    out[FULL_PRESET] = (0.5, 1.0)
    return out


def preset_window(name: str, pixels: np.ndarray, meta: Any = None) -> tuple[float, float] | None:
    """One preset's display-scale (centre, width), or None if the film has no such preset."""
    if name == FULL_PRESET:
        return 0.5, 1.0
    for label, c, w in _header_presets(meta):
        if label == name:
            return c, w
    if name in _PERCENTILE_PRESETS:
        return window_presets(pixels, None)[name]
    return None


def levels_from_window(centre: float, width: float) -> tuple[float, float]:
    """(brightness, contrast) for `window_level` giving exactly this display window (unclamped, unrounded,
    unlike `sliders_from_window`): how a header preset reaches the film exactly."""
    return 0.5 - float(centre), 1.0 / max(float(width), 1e-6)


# --- distance -------------------------------------------------------------------------------------


def _scale_xy(scale: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(scale, (int, float)):
        sx = sy = float(scale)
    else:
        sx, sy = float(scale[0]), float(scale[1])
    if not (sx > 0 and sy > 0 and math.isfinite(sx) and math.isfinite(sy)):
        raise ValueError(f"scale must be positive, got {scale!r}")
    return sx, sy


def distance_px(p0: Sequence[float], p1: Sequence[float], scale: float | Sequence[float] = 1.0) -> float:
    """Distance in ORIGINAL-image pixels between two points (x, y) given in displayed-image pixels.

    scale: displayed / original size, one number or (x, y) as `box_scale` gives it: io downscales large
    films (long side settings.WORKING_SIDE), so one displayed pixel can be several of the file's.
    """
    sx, sy = _scale_xy(scale)
    return math.hypot((float(p1[0]) - float(p0[0])) / sx, (float(p1[1]) - float(p0[1])) / sy)


def distance_mm(p0: Sequence[float], p1: Sequence[float], spacing_mm: Sequence[float] | None,
                scale: float | Sequence[float] = 1.0) -> float | None:
    """Distance in mm between two displayed-image points (x, y); None when the pixel spacing is unknown.

    spacing_mm is DICOM (row spacing, column spacing) = (mm per pixel along y, along x) of the ORIGINAL
    image, as io.ImageMeta.pixel_spacing holds it; `scale` as in `distance_px`. Never a guess: no or
    invalid spacing gives None, so no mm can be shown without it.
    """
    if spacing_mm is None:
        return None
    try:
        dy_mm, dx_mm = float(spacing_mm[0]), float(spacing_mm[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (dy_mm > 0 and dx_mm > 0 and math.isfinite(dy_mm) and math.isfinite(dx_mm)):
        return None
    sx, sy = _scale_xy(scale)
    dx = (float(p1[0]) - float(p0[0])) / sx * dx_mm
    dy = (float(p1[1]) - float(p0[1])) / sy * dy_mm
    return math.hypot(dx, dy)


def measurement_text(p0: Sequence[float], p1: Sequence[float], spacing_mm: Sequence[float] | None,
                     scale: float | Sequence[float] = 1.0) -> str:
    """ "Distance: 123.4 mm" with a known spacing, else "Pixel spacing unknown: 456 px" (never mm)."""
    mm = distance_mm(p0, p1, spacing_mm, scale)
    px = distance_px(p0, p1, scale)
    if mm is None:
        return f"Pixel spacing unknown: {px:.0f} px"
    return f"Distance: {mm:.1f} mm"


def draw_line(rgb: np.ndarray, p0: Sequence[float], p1: Sequence[float],
              colour: tuple[int, int, int] = (255, 214, 10)) -> np.ndarray:
    """A measurement line with end ticks (points in displayed pixels) on a copy of an RGB image."""
    import cv2

    out = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).copy())
    t = max(1, round(max(out.shape[:2]) / 400))
    a = (int(round(float(p0[0]))), int(round(float(p0[1]))))
    b = (int(round(float(p1[0]))), int(round(float(p1[1]))))
    cv2.line(out, a, b, colour, t, lineType=cv2.LINE_AA)
    for pt in (a, b):
        cv2.circle(out, pt, 2 * t + 1, colour, t, lineType=cv2.LINE_AA)
    return out


def invert(gray: np.ndarray) -> np.ndarray:
    return (255 - np.asarray(gray, dtype=np.uint8)).astype(np.uint8)


HEATMAP_COLOURSCALE = "Jet"  # matches explain.overlay's default OpenCV 'jet' colormap


def heatmap_legend_figure(method_label: str, target_label: str | None = None) -> go.Figure:
    """A colour-scale bar for the heatmap overlay: blue = little, red = most influence on the score."""
    ticks = [0.03, 0.5, 0.97]  # just inside the range: plotly drops labels that sit on its edges
    fig = go.Figure(go.Heatmap(z=[np.linspace(0, 1, 101)], x=np.linspace(0, 1, 101), y=[0],
                               colorscale=HEATMAP_COLOURSCALE, showscale=False, zmin=0, zmax=1,
                               hoverinfo="skip"))
    what = f" for {target_label}" if target_label else ""
    fig.update_xaxes(tickvals=ticks, ticktext=["0 (none)", "0.5", "1 (strongest)"], range=[0, 1],
                     ticks="outside",
                     title=f"{method_label} relevance{what} (faint areas are left transparent)")
    fig.update_yaxes(visible=False)
    fig.update_layout(height=90, template="plotly_white", margin=dict(l=40, r=70, t=5, b=50),
                      font=_LAYOUT["font"])
    return fig


def _png_data_uri(rgb: np.ndarray) -> str:
    import base64

    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB array
        raise ValueError("could not encode the image")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def viewer_figure(panels: Mapping[str, np.ndarray], spacing_mm: tuple[float, float] | None = None, *,
                  scale: float | Sequence[float] = 1.0,
                  line: tuple[Sequence[float], Sequence[float]] | None = None) -> go.Figure:
    """The film (and its overlay) as plotly images side by side with linked axes: mouse-wheel zoom and
    drag-pan move both panels together. Axes in displayed pixels; hover shows the pixel size in mm when
    the spacing (of the ORIGINAL image, DICOM row/column order) is known: divided by `scale` (displayed /
    original) so that it is the size of one displayed pixel. `line`: a measurement ((x0, y0), (x1, y1))
    in displayed pixels, drawn on every panel."""
    names = list(panels)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.02,
                        shared_xaxes="all", shared_yaxes="all")
    sx, sy = _scale_xy(scale)
    for j, name in enumerate(names, start=1):
        rgb = panels[name]
        h, w = rgb.shape[:2]
        fig.add_trace(go.Image(source=_png_data_uri(rgb), name=name, hoverinfo="x+y",
                               hovertemplate=("x %{x} px, y %{y} px" + (
                                   f"<br>{spacing_mm[1] / sx:.3f} x {spacing_mm[0] / sy:.3f} mm per px"
                                   if spacing_mm else "")
                                   + f"<extra>{name}</extra>")), row=1, col=j)
        if line is not None:
            (x0, y0), (x1, y1) = line
            fig.add_shape(type="line", x0=float(x0), y0=float(y0), x1=float(x1), y1=float(y1),
                          line=dict(color="#ffd60a", width=2), row=1, col=j)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x", constrain="domain")
    fig.update_annotations(y=0.0, yanchor="top", yshift=-4)  # panel names under the images, clear of the toolbar
    h, w = next(iter(panels.values())).shape[:2]
    panel_width = 560 / len(names)  # the viewer column is about 560 px wide at a 1400 px window
    fig.update_layout(height=int(min(900, max(300, panel_width * h / max(w, 1) + 70))), dragmode="pan",
                      template="plotly_white", margin=dict(l=0, r=0, t=34, b=30), font=_LAYOUT["font"],
                      uirevision="viewer")
    return fig


def to_rgb(gray: np.ndarray) -> np.ndarray:
    g = np.asarray(gray)
    if g.ndim == 3:
        return g[..., :3].astype(np.uint8)
    if g.dtype != np.uint8:
        g = np.clip(np.rint(g * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _resize(arr: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if arr.shape[:2] == tuple(shape):
        return arr
    import cv2

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(arr, (shape[1], shape[0]), interpolation=interp)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 255),
                 thickness: int | None = None) -> np.ndarray:
    """Draw the contour of a boolean mask (resized to the image) onto a copy of an RGB image."""
    import cv2

    m = _resize(np.asarray(mask, dtype=np.uint8), rgb.shape[:2], nearest=True)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(rgb.copy())
    t = thickness or max(1, round(max(rgb.shape[:2]) / 400))
    cv2.drawContours(out, contours, -1, colour, t, lineType=cv2.LINE_AA)
    return out


def box_scale(image: Any) -> tuple[float, float]:
    """(displayed / original) pixel ratio for drawing detector boxes (given in original pixels)."""
    ow, oh = getattr(getattr(image, "meta", None), "original_size", (image.width, image.height))
    return image.width / max(ow, 1), image.height / max(oh, 1)


def zoom(rgb: np.ndarray, factor: float = 1.0, cx: float = 0.5, cy: float = 0.5) -> np.ndarray:
    """Crop a window of 1/factor of the image around the relative centre (cx, cy), kept inside the image."""
    factor = max(1.0, float(factor))
    if factor == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    ch, cw = max(8, int(round(h / factor))), max(8, int(round(w / factor)))
    y0 = int(round(cy * h - ch / 2))
    x0 = int(round(cx * w - cw / 2))
    y0 = min(max(0, y0), h - ch)
    x0 = min(max(0, x0), w - cw)
    crop = rgb[y0:y0 + ch, x0:x0 + cw]
    return _resize(crop, (h, w))


def filter_boxes(boxes: Iterable[Any], conf: float = 0.0, classes: Iterable[str] | None = None) -> list[Any]:
    keep = set(classes) if classes is not None else None
    return [b for b in boxes if float(b.confidence) >= conf and (keep is None or b.label in keep)]
