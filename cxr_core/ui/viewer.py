"""The film viewer's image operations: window/level and presets, invert, zoom, the lung outline, box
scaling, and the interactive plotly view. Display only: nothing here changes what a model sees.

No Streamlit here, so every number the app shows can be checked from a notebook or a test.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

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


# Window presets on the display scale (0 = darkest, 1 = brightest value of the film as decoded):
# the decoded image carries no stored WindowCenter/Width or Hounsfield-like units (io.ImageMeta).
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


def viewer_figure(panels: Mapping[str, np.ndarray], spacing_mm: tuple[float, float] | None = None) -> go.Figure:
    """The film (and its overlay) as plotly images side by side with linked axes: mouse-wheel zoom and
    drag-pan move both panels together. Axes in pixels; hover shows the position in mm when the pixel
    spacing is known."""
    names = list(panels)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.02,
                        shared_xaxes="all", shared_yaxes="all")
    for j, name in enumerate(names, start=1):
        rgb = panels[name]
        h, w = rgb.shape[:2]
        fig.add_trace(go.Image(source=_png_data_uri(rgb), name=name, hoverinfo="x+y",
                               hovertemplate=("x %{x} px, y %{y} px" + (
                                   f"<br>{spacing_mm[1]:.3f} x {spacing_mm[0]:.3f} mm per px" if spacing_mm else "")
                                   + f"<extra>{name}</extra>")), row=1, col=j)
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
